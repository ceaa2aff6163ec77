'use strict'
// Flow events ('end', 'error', 'close' on a Flow, as on a net.Socket) and Machnet.close().
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const { EventEmitter } = require('node:events')
const { attach, codes } = require('machnet')
const { SOCKET_A, SOCKET_B, linkedPair, rejectsWith, throwsWith } = require('./helpers.js')

/** Rejects after `ms` with a message naming `what` (unless `p` settles first). */
function within(p, what, ms = 30000) {
  let timer
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([p, t]).finally(() => clearTimeout(timer))
}

/** Records the events of `flow` in order, as [name, ...args]; `closed` resolves on 'close'. */
function record(flow, { listenError = true } = {}) {
  const seen = []
  if (listenError) flow.on('error', (err) => seen.push(['error', err]))
  flow.on('end', () => seen.push(['end']))
  const closed = new Promise((resolve) =>
    flow.once('close', (hadError, err) => {
      seen.push(['close', hadError, err])
      resolve()
    }))
  return { seen, closed }
}

/** The server's end of the client's flow, after one message from the client. */
async function serverFlow(server, client, flow) {
  await client.send(flow, Buffer.from('ping'))
  const { flow: sflow, data } = await within(server.recv(), 'server recv')
  assert.equal(data.toString(), 'ping')
  return sflow
}

test('a Flow is an EventEmitter', async () => {
  const { client, flow, close } = await linkedPair()
  try {
    assert.ok(flow instanceof EventEmitter)
    assert.equal(flow.listenerCount('close'), 0)
  } finally {
    await close()
  }
})

test('reset by the peer: error (ECONNRESET, naming the flow) then close(hadError)', async () => {
  const { server, client, flow, close } = await linkedPair()
  try {
    const { seen, closed } = record(flow)
    const sflow = await serverFlow(server, client, flow)
    await server.abortFlow(sflow)
    // A pending receive reads the channel's notifications; it is not settled by the event.
    const pending = client.recv().then(() => 'message', (e) => e)
    await within(closed, 'the client flow closes')
    assert.deepEqual(seen.map((e) => e[0]), ['error', 'close'])
    const err = seen[0][1]
    assert.ok(err instanceof Error)
    assert.equal(err.code, 'ECONNRESET')
    assert.equal(err.flow, flow)
    assert.ok(err.message.includes(flow.toString()), err.message)
    assert.match(err.message, /reset/)
    assert.equal(seen[1][1], true)
    assert.equal(seen[1][2], err)
    await rejectsWith(client.send(flow, Buffer.from('x')), codes.FLOW_CLOSED)
    await client.close()
    const r = await pending
    assert.equal(r.code, codes.CHANNEL_CLOSED, `the pending receive got ${r}`)
    assert.equal(flow.listenerCount('close'), 0)
  } finally {
    await close()
  }
})

test('an unhandled flow error does not throw; close still carries it', async () => {
  const { server, client, flow, close } = await linkedPair()
  try {
    const { seen, closed } = record(flow, { listenError: false })
    const sflow = await serverFlow(server, client, flow)
    await server.abortFlow(sflow)
    // tryRecv also reads the notifications (the events are emitted after it returns).
    for (let i = 0; i < 6000 && seen.length === 0; i++) {
      assert.equal(client.tryRecv(), null)
      await new Promise((r) => setTimeout(r, 5))
    }
    await within(closed, 'the client flow closes')
    assert.deepEqual(seen.map((e) => e.slice(0, 2)), [['close', true]])
    assert.equal(seen[0][2].code, 'ECONNRESET')
  } finally {
    await close()
  }
})

test('graceful close by the peer: every message, then end, then close(false)', async () => {
  const { server, client, flow, close } = await linkedPair()
  try {
    const { seen, closed } = record(flow)
    const sflow = await serverFlow(server, client, flow)
    for (const s of ['one', 'two', 'three']) await server.send(sflow, Buffer.from(s))
    await server.closeFlow(sflow)
    for (const s of ['one', 'two', 'three']) {
      const m = await within(client.recv(), `message ${s}`)
      assert.ok(m.flow === flow)
      seen.push(['message', m.data.toString()])
    }
    const pending = client.recv().then(() => 'message', (e) => e)
    await within(closed, 'the client flow closes')
    assert.deepEqual(seen, [
      ['message', 'one'], ['message', 'two'], ['message', 'three'],
      ['end'], ['close', false, undefined],
    ])
    // This side was closed with the peer's ('allowHalfOpen: false').
    await rejectsWith(client.send(flow, Buffer.from('x')), codes.FLOW_CLOSED)
    await client.close()
    assert.equal((await pending).code, codes.CHANNEL_CLOSED)
  } finally {
    await close()
  }
})

test('closing the channel closes its flows (close(false))', async () => {
  const { client, flow, close } = await linkedPair()
  try {
    const { seen, closed } = record(flow)
    await client.close()
    await within(closed, 'the flow closes with its channel')
    assert.deepEqual(seen, [['close', false, undefined]])
  } finally {
    await close()
  }
})

/** Sockets this process has open (from /proc/self/fd). */
function openSockets() {
  let n = 0
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:')) n++
    } catch {
      // closed meanwhile (the directory's own descriptor)
    }
  }
  return n
}

test('Machnet.close(): pending receives reject, channels and control connection close', async () => {
  const server = await (await attach(SOCKET_A())).openChannel()
  const before = openSockets()
  const m = await attach(SOCKET_B())
  try {
    const port = 2000 + (process.pid % 1000) * 8 + 7
    await server.listen(port)
    const ch1 = await m.openChannel()
    const ch2 = await m.openChannel()
    const flow = await ch1.connect('127.0.0.1', port)
    const { seen, closed } = record(flow)
    const failed = (p) => p.then((msg) => assert.fail(`received ${msg.data}`), (err) => err)
    const p1 = failed(ch1.recv())
    const p2 = failed(ch2.recv(60000))
    const iter = ch2[Symbol.asyncIterator]()
    const next = iter.next()
    // Sent before close(): delivered, then the peer sees the flow end gracefully.
    await ch1.send(flow, Buffer.from('last words'))
    assert.equal(m.closed, false)
    await m.close()
    for (const err of [await p1, await p2]) {
      assert.equal(err.code, codes.CHANNEL_CLOSED)
      assert.match(err.message, /Machnet was closed/)
    }
    assert.deepEqual(await next, { done: true, value: undefined })
    assert.equal(m.closed, true)
    assert.equal(ch1.closed, true)
    await within(closed, 'the flow closes with the Machnet')
    assert.deepEqual(seen, [['close', false, undefined]])
    // Later calls fail clearly.
    await rejectsWith(ch1.send(flow, Buffer.from('x')), codes.CHANNEL_CLOSED)
    await rejectsWith(ch2.recv(), codes.CHANNEL_CLOSED)
    throwsWith(() => ch2.tryRecv(), codes.CHANNEL_CLOSED)
    await rejectsWith(m.openChannel(), codes.CLOSED)
    throwsWith(() => m.isSidecarGone(), codes.CLOSED)
    assert.equal(typeof m.localIp, 'string')
    await m.close() // twice: nothing
    await m[Symbol.asyncDispose]()
    // The peer got the message, then the graceful end.
    const sflowEnd = []
    const msg = await within(server.recv(), 'server recv')
    assert.equal(msg.data.toString(), 'last words')
    const sclosed = new Promise((resolve) => msg.flow.once('close', (hadError) => resolve(hadError)))
    msg.flow.on('end', () => sflowEnd.push('end'))
    const pending = server.recv().catch((e) => e)
    assert.equal(await within(sclosed, 'the server flow closes'), false)
    assert.deepEqual(sflowEnd, ['end'])
    await server.close()
    assert.equal((await pending).code, codes.CHANNEL_CLOSED)
    // The control connection and every duplicate of it are closed (after the loop closed the
    // libuv polls).
    await new Promise((r) => setImmediate(r))
    assert.equal(openSockets(), before)
  } finally {
    await m.close()
    await server.close()
  }
})

test('Machnet.close() while a channel is being opened; Symbol.asyncDispose', async () => {
  const m = await attach(SOCKET_B())
  const opening = m.openChannel().then((ch) => ch, (err) => err)
  await m[Symbol.asyncDispose]()
  const err = await opening
  assert.equal(err.code, codes.CLOSED, `openChannel resolved or failed otherwise: ${err}`)
  assert.equal(m.closed, true)
})
