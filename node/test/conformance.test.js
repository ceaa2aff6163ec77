'use strict'
// The cross-language conformance cases (conformance/cases.json; see conformance/README.md): one
// test per case, in file order, each on a fresh channel of the client sidecar (B). ci/node.sh
// starts the apps on sidecar A and sets MACHNET_CONFORMANCE_CASES, MACHNET_CONFORMANCE_SERVER_IP,
// MACHNET_CONFORMANCE_ECHO_PORT, MACHNET_CONFORMANCE_KV_PORT and MACHNET_CONFORMANCE_RAFT_PORT
// (the KV port of the Raft cluster's leader; app `raft` speaks the KV app's request format).
//
// Error names → `.code` (conformance/README.md, "Error names"):
//   refused          → ERR_MACHNET_CONNECTION_REFUSED
//   invalid_argument → ERR_MACHNET_INVALID_ARGUMENT
//   too_large        → ERR_MACHNET_MESSAGE_TOO_LARGE
//   reset            → ERR_MACHNET_FLOW_CLOSED (a later send on the flow)
//   closed           → ERR_MACHNET_FLOW_CLOSED (a later send: the receive side that passes the
//                      peer's graceful close closes this side too)
//
// Event names (a case's `event`) → the Flow's events (node/README.md, "Flow events"):
//   reset            → 'error' with code ECONNRESET (naming the flow), then 'close'(true, err)
//   peer_closed      → 'end' after the last message, then 'close'(false)
const { test, before } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { attach, codes } = require('machnet')
const { SOCKET_A, SOCKET_B } = require('./helpers.js')

const CASES_PATH =
  process.env.MACHNET_CONFORMANCE_CASES || path.join(__dirname, '..', '..', 'conformance', 'cases.json')
const CASES = JSON.parse(fs.readFileSync(CASES_PATH, 'utf8')).cases

function envOr(name, dflt) {
  const v = process.env[name]
  return v === undefined || v === '' ? dflt : v
}
const SERVER_IP = () => envOr('MACHNET_CONFORMANCE_SERVER_IP', '127.0.0.1')
const ECHO_PORT = () => Number(envOr('MACHNET_CONFORMANCE_ECHO_PORT', 888))
/** A required port variable (a case of that app fails without it). */
function portVar(name) {
  const v = process.env[name]
  if (!v) throw new Error(`${name} is not set: run the tests through ci/node.sh`)
  return Number(v)
}
/** The port of a KV-format case's app: `kv` (machnet-kv) or `raft` (the Raft cluster's leader). */
function kvAppPort(c) {
  if (c.app === 'kv') return portVar('MACHNET_CONFORMANCE_KV_PORT')
  if (c.app === 'raft') return portVar('MACHNET_CONFORMANCE_RAFT_PORT')
  throw new Error(`case ${c.name}: app ${c.app} does not speak the KV format (update this runner)`)
}

/** How long one receive, connect or wait for a flow's end may take before the case fails. */
const WAIT_MS = 60000

const ERRORS = {
  refused: { code: codes.CONNECTION_REFUSED, message: /refused/i },
  invalid_argument: { code: codes.INVALID_ARGUMENT },
  too_large: { code: codes.MESSAGE_TOO_LARGE },
  reset: { code: codes.FLOW_CLOSED },
  closed: { code: codes.FLOW_CLOSED },
  timeout: { code: codes.TIMEOUT }, // not an error name of cases.json: recv_timeout uses it
}
/** What each event name of cases.json looks like on a Flow: the events in order, checked. */
const EVENTS = {
  reset(seen, flow) {
    assert.deepEqual(seen.map((e) => e[0]), ['error', 'close'], 'reset: events')
    const err = seen[0][1]
    assert.equal(err.code, 'ECONNRESET', `reset: ${err.message}`)
    assert.equal(err.flow, flow, 'reset: the error names another flow')
    assert.deepEqual(seen[1].slice(1), [true, err], 'reset: close(hadError, err)')
  },
  peer_closed(seen) {
    assert.deepEqual(seen, [['end'], ['close', false, undefined]], 'peer_closed: events')
  },
}

/** Records the events of `flow` ([name, ...args] in order); `closed` resolves on 'close'. */
function flowEvents(flow) {
  const seen = []
  flow.on('error', (err) => seen.push(['error', err]))
  flow.on('end', () => seen.push(['end']))
  const closed = new Promise((resolve) => flow.once('close', (...args) => resolve(seen.push(['close', ...args]))))
  return { seen, closed }
}

/** Checks the case's `event` (if it names one) once the flow closed. Events are read by the
 * receive side: tryRecv reads the notifications meanwhile (and must not deliver anything). */
async function checkEvent(c, ch, flow, events) {
  if (c.event === undefined) return
  const check = EVENTS[c.event]
  assert.ok(check, `case ${c.name}: unknown event ${JSON.stringify(c.event)} (update this runner)`)
  let closed = false
  events.closed.then(() => (closed = true))
  const deadline = Date.now() + WAIT_MS
  while (!closed) {
    assert.ok(Date.now() < deadline, `the flow's 'close' event never came (${c.event})`)
    assert.equal(ch.tryRecv(), null, 'a message arrived after the flow ended')
    await sleep(5)
  }
  check(events.seen, flow)
}

const KV_STATUS = { ok: 0, not_found: 1, bad_request: 2, server_error: 3 }
const KV_GET = 1
const KV_SET = 2

/** The payload of size `n`: byte `i` is `(i * 7 + n) mod 256`. */
function pattern(n) {
  const b = Buffer.allocUnsafe(n)
  for (let i = 0; i < n; i++) b[i] = (i * 7 + n) & 0xff
  return b
}

function checkError(err, name) {
  const want = ERRORS[name]
  assert.ok(want, `unknown error name ${name}`)
  assert.ok(err instanceof Error, `expected an Error (${name}), got ${err}`)
  assert.equal(err.code, want.code, `${name}: wrong code for: ${err.message}`)
  if (want.message) assert.match(err.message, want.message, `${name}: message`)
}

async function expectError(p, name) {
  let err = null
  try {
    await p
  } catch (e) {
    err = e
  }
  assert.ok(err !== null, `expected ${name}, but it succeeded`)
  checkError(err, name)
}

/** Rejects after `ms` with a message naming `what` (unless `p` settles first). */
function within(p, what, ms = WAIT_MS) {
  let timer
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([p, t]).finally(() => clearTimeout(timer))
}

async function recvOn(ch, flow, what) {
  const msg = await within(ch.recv(), what)
  assert.ok(msg.flow.equals(flow), `${what}: arrived on ${msg.flow}, sent on ${flow}`)
  return msg.data
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

// ----- the cases -----

const run = {
  async echo(ch, c) {
    const flow = await ch.connect(SERVER_IP(), ECHO_PORT(), WAIT_MS)
    for (const size of c.sizes) {
      const msg = pattern(size)
      await ch.send(flow, msg)
      const got = await recvOn(ch, flow, `size ${size}`)
      assert.equal(got.length, size, `size ${size}: echo has ${got.length} bytes`)
      assert.ok(got.equals(msg), `size ${size}: echo differs`)
    }
  },

  async echo_pipelined(ch, c) {
    const flow = await ch.connect(SERVER_IP(), ECHO_PORT(), WAIT_MS)
    const msgs = []
    for (let k = 0; k < c.count; k++) {
      const m = pattern(c.size)
      m.writeUInt32LE(k, 0)
      msgs.push(m)
    }
    for (const m of msgs) await ch.send(flow, m)
    for (let k = 0; k < c.count; k++) {
      const got = await recvOn(ch, flow, `message ${k}`)
      assert.ok(got.equals(msgs[k]), `message ${k}: got message ${got.length >= 4 ? got.readUInt32LE(0) : '?'} or other bytes`)
    }
  },

  async echo_flows(ch, c) {
    const flows = []
    for (let i = 0; i < c.flows; i++) flows.push(await ch.connect(SERVER_IP(), ECHO_PORT(), WAIT_MS))
    assert.equal(new Set(flows.map((f) => f.handle)).size, c.flows, 'connect returned the same flow twice')
    const msg = pattern(c.size)
    for (let r = 0; r < c.count; r++) {
      for (const f of flows) await ch.send(f, msg)
      const seen = new Set()
      for (let i = 0; i < c.flows; i++) {
        const got = await within(ch.recv(), `round ${r}, message ${i}`)
        assert.ok(flows.some((f) => f.equals(got.flow)), `round ${r}: message on unknown flow ${got.flow}`)
        assert.ok(!seen.has(got.flow.handle), `round ${r}: two messages on ${got.flow}`)
        assert.ok(got.data.equals(msg), `round ${r}: echo on ${got.flow} differs`)
        seen.add(got.flow.handle)
      }
    }
  },

  // recv(timeoutMs) rejects with ERR_MACHNET_TIMEOUT, not before the timeout; the channel then
  // still has nothing waiting (the cancelled receive consumed nothing).
  async recv_timeout(ch, c) {
    const start = process.hrtime.bigint()
    await expectError(ch.recv(c.timeout_ms), 'timeout')
    const elapsedMs = Number(process.hrtime.bigint() - start) / 1e6
    assert.ok(elapsedMs >= c.timeout_ms - 1, `the ${c.timeout_ms} ms timeout fired after ${elapsedMs} ms`)
    assert.equal(ch.tryRecv(), null)
  },

  async connect_error(ch, c) {
    await expectError(ch.connect(SERVER_IP(), c.port, WAIT_MS), c.error)
  },

  async send_error(ch, c) {
    const flow = await ch.connect(SERVER_IP(), ECHO_PORT(), WAIT_MS)
    await expectError(ch.send(flow, pattern(c.size)), c.error)
    await ch.send(flow, Buffer.from([0x2a]))
    const got = await recvOn(ch, flow, 'after the failed send')
    assert.ok(got.equals(Buffer.from([0x2a])), `got ${got.length} bytes back, not the 1-byte message`)
    assert.equal(ch.tryRecv(), null, 'the failed send was echoed')
  },

  async peer_goes_away(ch, c) {
    const ma = await attach(SOCKET_A())
    const server = await ma.openChannel()
    let flow, events
    try {
      await server.listen(c.port)
      flow = await ch.connect(SERVER_IP(), c.port, WAIT_MS)
      events = flowEvents(flow)
      await ch.send(flow, Buffer.from('ping'))
      const { flow: sflow, data } = await within(server.recv(), 'server recv')
      assert.equal(data.toString(), 'ping')
      await server.send(sflow, Buffer.from('pong'))
      assert.equal((await recvOn(ch, flow, 'reply')).toString(), 'pong')
    } finally {
      await server.abort()
    }
    await flowEnds(ch, flow, c.error)
    await checkEvent(c, ch, flow, events)
  },

  async peer_closes_after_sending(ch, c) {
    const ma = await attach(SOCKET_A())
    const server = await ma.openChannel()
    let flow, events
    try {
      await server.listen(c.port)
      flow = await ch.connect(SERVER_IP(), c.port, WAIT_MS)
      events = flowEvents(flow)
      await ch.send(flow, Buffer.from('ping'))
      const { flow: sflow, data } = await within(server.recv(), 'server recv')
      assert.equal(data.toString(), 'ping')
      for (const n of c.sizes) await server.send(sflow, pattern(n))
    } finally {
      await server.close() // graceful, right after the sends
    }
    for (const n of c.sizes) {
      const got = await recvOn(ch, flow, `message of ${n} bytes`)
      assert.equal(got.length, n, `message of ${n} bytes: ${got.length} received`)
      assert.ok(got.equals(pattern(n)), `message of ${n} bytes differs`)
      assert.deepEqual(events.seen, [], `an event before the message of ${n} bytes was received`)
    }
    await flowEnds(ch, flow, c.error)
    await checkEvent(c, ch, flow, events)
  },

  async kv(ch, c) {
    const flow = await ch.connect(SERVER_IP(), kvAppPort(c), WAIT_MS)
    for (const [i, step] of c.steps.entries()) {
      const what = `step ${i} (${step.request.slice(0, 32)}...)`
      await ch.send(flow, Buffer.from(step.request, 'hex'))
      const { status, id, body } = kvResponse(await recvOn(ch, flow, what), what)
      assert.equal(status, KV_STATUS[step.status], `${what}: status ${status}, expected ${step.status} (body ${body.toString('utf8', 0, 200)})`)
      assert.equal(id, step.id, `${what}: id`)
      if (step.body !== undefined) assert.equal(body.toString('hex'), step.body, `${what}: body`)
      if (step.body_contains !== undefined) {
        const text = new TextDecoder('utf-8', { fatal: true }).decode(body)
        assert.ok(text.includes(step.body_contains), `${what}: body ${JSON.stringify(text)}`)
      }
    }
  },

  async kv_pipelined(ch, c) {
    const flow = await ch.connect(SERVER_IP(), kvAppPort(c), WAIT_MS)
    const request = (op, i, value = Buffer.alloc(0)) => {
      const key = Buffer.from(c.key_prefix + String(i), 'utf8')
      const head = Buffer.alloc(7)
      head.writeUInt8(op, 0)
      head.writeUInt32LE(i, 1)
      head.writeUInt16LE(key.length, 5)
      return Buffer.concat([head, key, value])
    }
    const u32 = (i) => {
      const b = Buffer.alloc(4)
      b.writeUInt32LE(i, 0)
      return b
    }
    for (let i = 0; i < c.count; i++) await ch.send(flow, request(KV_SET, i, u32(i)))
    for (let i = 0; i < c.count; i++) {
      const r = kvResponse(await recvOn(ch, flow, `SET ${i}`), `SET ${i}`)
      assert.deepEqual([r.status, r.id], [0, i], `SET ${i}: ${r.body.toString()}`)
    }
    for (let i = 0; i < c.count; i++) await ch.send(flow, request(KV_GET, i))
    for (let i = 0; i < c.count; i++) {
      const r = kvResponse(await recvOn(ch, flow, `GET ${i}`), `GET ${i}`)
      assert.deepEqual([r.status, r.id], [0, i], `GET ${i}: ${r.body.toString()}`)
      assert.equal(r.body.toString('hex'), u32(i).toString('hex'), `GET ${i}: value`)
    }
  },
}

/** The client flow ends: a later send fails with `name` (tryRecv reads the notifications
 * meanwhile and must not deliver anything). */
async function flowEnds(ch, flow, name) {
  const deadline = Date.now() + WAIT_MS
  let err = null
  while (err === null) {
    assert.ok(Date.now() < deadline, 'the client flow never ended')
    assert.equal(ch.tryRecv(), null, 'a message arrived after the peer went away')
    try {
      await ch.send(flow, Buffer.from('x'))
      await sleep(5)
    } catch (e) {
      err = e
    }
  }
  checkError(err, name)
}

function kvResponse(data, what) {
  assert.ok(data.length >= 5, `${what}: response of ${data.length} bytes: ${data.toString('hex')}`)
  return { status: data.readUInt8(0), id: data.readUInt32LE(1), body: data.subarray(5) }
}

let client = null
before(async () => {
  client = await attach(SOCKET_B())
})

for (const c of CASES) {
  test(`conformance: ${c.name}`, async () => {
    const fn = run[c.do]
    assert.ok(fn, `case ${c.name}: unknown 'do' ${JSON.stringify(c.do)}`)
    // A fresh channel of the client sidecar per case; closing it closes the case's flows.
    const ch = await client.openChannel()
    try {
      await fn(ch, c)
    } finally {
      await ch.close()
    }
  })
}
