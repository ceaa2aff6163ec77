'use strict'
// Error codes and argument validation.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { attach, codes, Flow } = require('machnet')
const { SOCKET_A, SOCKET_B, ECHO_IP, ECHO_PORT, payload, rejectsWith, throwsWith, freshPort, linkedPair } =
  require('./helpers.js')

test('attach: unreachable socket and bad argument', async () => {
  await rejectsWith(attach('/nonexistent/machnet.sock'), codes.SIDECAR_UNREACHABLE)
  await rejectsWith(attach(42), codes.INVALID_ARG_TYPE, TypeError)
})

test('openChannel: engine validated, unknown engine refused', async () => {
  const m = await attach(SOCKET_B())
  await rejectsWith(m.openChannel(-1), codes.OUT_OF_RANGE, RangeError)
  await rejectsWith(m.openChannel(0.5), codes.OUT_OF_RANGE, RangeError)
  await rejectsWith(m.openChannel('0'), codes.INVALID_ARG_TYPE, TypeError)
  await rejectsWith(m.openChannel(m.engines + 100), codes.INVALID_ARGUMENT)
})

test('listen: ports validated (no wrapping of negatives), port in use', async () => {
  const m = await attach(SOCKET_A())
  const ch1 = await m.openChannel()
  const ch2 = await m.openChannel()
  try {
    await rejectsWith(ch1.listen(-1), codes.OUT_OF_RANGE, RangeError)
    await rejectsWith(ch1.listen(-65535), codes.OUT_OF_RANGE, RangeError)
    await rejectsWith(ch1.listen(65536), codes.OUT_OF_RANGE, RangeError)
    await rejectsWith(ch1.listen(1.5), codes.OUT_OF_RANGE, RangeError)
    await rejectsWith(ch1.listen(NaN), codes.OUT_OF_RANGE, RangeError)
    await rejectsWith(ch1.listen('80'), codes.INVALID_ARG_TYPE, TypeError)
    await rejectsWith(ch1.listen(0), codes.INVALID_ARGUMENT)
    const port = freshPort()
    await ch1.listen(port)
    // The same channel twice: in use. Another channel of this process joins the port's listen
    // group (docs/CHANNEL.md §2); only another process would get PORT_IN_USE.
    await rejectsWith(ch1.listen(port), codes.PORT_IN_USE)
    await ch2.listen(port)
    await ch1.unlisten(port)
    await ch2.unlisten(port)
  } finally {
    await ch1.close()
    await ch2.close()
  }
})

test('connect: bad arguments, refused port, timeout validation', async () => {
  const m = await attach(SOCKET_B())
  const ch = await m.openChannel()
  try {
    await rejectsWith(ch.connect('not-an-ip', 1), codes.INVALID_ARG_VALUE, TypeError)
    await rejectsWith(ch.connect(0x7f000001, 1), codes.INVALID_ARG_TYPE, TypeError)
    await rejectsWith(ch.connect(ECHO_IP(), -1), codes.OUT_OF_RANGE, RangeError)
    await rejectsWith(ch.connect(ECHO_IP(), ECHO_PORT(), -5), codes.OUT_OF_RANGE, RangeError)
    // Nobody listens on this port of sidecar A: the peer refuses.
    await rejectsWith(ch.connect('127.0.0.1', freshPort()), codes.CONNECTION_REFUSED)
    // The channel still works after the failures.
    const flow = await ch.connect(ECHO_IP(), ECHO_PORT(), 10000)
    const msg = payload(10)
    await ch.send(flow, msg)
    assert.ok((await ch.recv()).data.equals(msg))
  } finally {
    await ch.close()
  }
})

test('send: message sizes, argument types, closed flow, wrong channel', async () => {
  const m = await attach(SOCKET_B())
  const ch = await m.openChannel()
  const other = await m.openChannel()
  try {
    const flow = await ch.connect(ECHO_IP(), ECHO_PORT())
    await rejectsWith(ch.send(flow, Buffer.alloc(0)), codes.INVALID_ARGUMENT)
    await rejectsWith(ch.send(flow, Buffer.alloc(ch.maxMessageLen + 1)), codes.MESSAGE_TOO_LARGE)
    await rejectsWith(ch.send(flow, 'hello'), codes.INVALID_ARG_TYPE, TypeError)
    await rejectsWith(ch.send(flow, [1, 2, 3]), codes.INVALID_ARG_TYPE, TypeError)
    await rejectsWith(ch.send({ handle: flow.handle }, Buffer.from('x')), codes.INVALID_ARG_TYPE, TypeError)
    await rejectsWith(ch.send(m, Buffer.from('x')), codes.INVALID_ARG_TYPE, TypeError)
    throwsWith(() => ch.trySend(flow, Buffer.alloc(0)), codes.INVALID_ARGUMENT)
    await rejectsWith(other.send(flow, Buffer.from('x')), codes.INVALID_ARGUMENT)
    // Twice: the second call finds the flow object already checked, and still refuses it.
    throwsWith(() => other.trySend(flow, Buffer.from('x')), codes.INVALID_ARGUMENT)
    throwsWith(() => other.trySend(flow, Buffer.from('x')), codes.INVALID_ARGUMENT)
    // recv and trySend are plain Node-API functions: `this` must be a Channel.
    throwsWith(() => ch.trySend.call({}, flow, Buffer.from('x')), codes.INVALID_ARG_TYPE, TypeError)
    throwsWith(() => ch.trySend.call(flow, flow, Buffer.from('x')), codes.INVALID_ARG_TYPE, TypeError)
    throwsWith(() => ch.recv.call(m), codes.INVALID_ARG_TYPE, TypeError)
    throwsWith(() => ch.trySend(flow), codes.INVALID_ARG_TYPE, TypeError)
    assert.throws(() => new Flow(), /constructor/, 'flows come from connect and recv only')
    await ch.closeFlow(flow)
    await rejectsWith(ch.send(flow, Buffer.from('x')), codes.FLOW_CLOSED)
    throwsWith(() => ch.trySend(flow, Buffer.from('x')), codes.FLOW_CLOSED)
  } finally {
    await ch.close()
    await other.close()
  }
})

test('close: pending receive rejects, later calls fail, closing twice is fine', async () => {
  const m = await attach(SOCKET_B())
  const ch = await m.openChannel()
  const flow = await ch.connect(ECHO_IP(), ECHO_PORT())
  const pending = rejectsWith(ch.recv(), codes.CHANNEL_CLOSED)
  await ch.close()
  assert.equal(ch.closed, true)
  await pending
  await rejectsWith(ch.recv(), codes.CHANNEL_CLOSED)
  await rejectsWith(ch.send(flow, Buffer.from('x')), codes.CHANNEL_CLOSED)
  await rejectsWith(ch.connect(ECHO_IP(), ECHO_PORT()), codes.CHANNEL_CLOSED)
  await rejectsWith(ch.listen(freshPort()), codes.CHANNEL_CLOSED)
  throwsWith(() => ch.tryRecv(), codes.CHANNEL_CLOSED)
  throwsWith(() => ch.trySend(flow, Buffer.from('x')), codes.CHANNEL_CLOSED)
  await ch.close()
})

test('abort: pending receive rejects, later calls fail, aborting or closing again is fine', async () => {
  const m = await attach(SOCKET_B())
  const ch = await m.openChannel()
  const flow = await ch.connect(ECHO_IP(), ECHO_PORT())
  const pending = rejectsWith(ch.recv(), codes.CHANNEL_CLOSED)
  await ch.abort()
  assert.equal(ch.closed, true)
  await pending
  await rejectsWith(ch.send(flow, Buffer.from('x')), codes.CHANNEL_CLOSED)
  await ch.abort()
  await ch.close()
})

test('Symbol.asyncDispose closes the channel gracefully (await using)', async () => {
  assert.equal(typeof Symbol.asyncDispose, 'symbol', 'this Node.js has explicit resource management symbols')
  const { server, client, flow, close } = await linkedPair()
  try {
    await client.send(flow, Buffer.from('last words'))
    await client[Symbol.asyncDispose]()
    assert.equal(client.closed, true)
    await rejectsWith(client.send(flow, Buffer.from('x')), codes.CHANNEL_CLOSED)
    // Graceful: what was sent before still arrives.
    const { data } = await server.recv(20000)
    assert.equal(data.toString(), 'last words')
    await client[Symbol.asyncDispose]()
  } finally {
    await close()
  }
})

test('a peer abort ends the flow: sends then fail with FLOW_CLOSED', async () => {
  const { server, client, flow, close } = await linkedPair()
  try {
    await client.send(flow, Buffer.from('hi'))
    const { flow: accepted } = await server.recv()
    await server.abortFlow(accepted)
    // The client learns of the reset from its notifications (read by receives).
    let err = null
    while (err === null) {
      assert.equal(client.tryRecv(), null)
      try {
        await client.send(flow, Buffer.from('x'))
        await new Promise((r) => setTimeout(r, 5))
      } catch (e) {
        err = e
      }
    }
    assert.equal(err.code, codes.FLOW_CLOSED)
  } finally {
    await close()
  }
})

/** Starts a sidecar of its own on 127.0.0.3 and attaches to it; `kill()` SIGKILLs it and
 * resolves once it has exited. */
async function doomedSidecar(t) {
  const bin = process.env.MACHNET_TEST_SIDECAR
  if (!bin) throw new Error('MACHNET_TEST_SIDECAR is not set: run the tests through ci/node.sh')
  const { spawn } = require('node:child_process')
  const fs = require('node:fs')
  const os = require('node:os')
  const path = require('node:path')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'machnet-node-test-'))
  const sock = path.join(dir, 'c.sock')
  const uid = String(process.getuid())
  // MACHNET_TEST_SIDECAR_ARGS: e.g. a free UDP port pool (ci/node.sh passes one).
  const extra = (process.env.MACHNET_TEST_SIDECAR_ARGS || '').split(' ').filter(Boolean)
  const args = ['--local-ip', '127.0.0.3', '--control-socket', sock, '--allow-user', uid, '--stats-interval', '0', ...extra]
  const child = spawn(bin, args, { stdio: 'ignore' })
  t.after(() => {
    child.kill('SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const exited = new Promise((r) => child.once('exit', r))
  // Wait for the control socket to appear (or the sidecar to exit).
  let m = null
  while (m === null) {
    try {
      m = await attach(sock)
    } catch (e) {
      assert.equal(e.code, codes.SIDECAR_UNREACHABLE)
      if (child.exitCode !== null) throw new Error(`sidecar exited with ${child.exitCode}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  const kill = () => {
    child.kill('SIGKILL')
    return exited
  }
  return { m, kill }
}

test('a sidecar that dies fails pending and later operations with SIDECAR_GONE', async (t) => {
  const { m, kill } = await doomedSidecar(t)
  const ch = await m.openChannel()
  await ch.listen(freshPort())
  const pending = rejectsWith(ch.recv(), codes.SIDECAR_GONE)
  await kill()
  await pending
  assert.equal(m.isSidecarGone(), true)
  await rejectsWith(m.openChannel(), codes.SIDECAR_GONE)
  await ch.close()
})

// Issue 14: a send into a ring with room used to succeed after the sidecar died (the message
// was lost). Every call that hands something to the sidecar must fail, nothing received first.
test('after the sidecar died, send, trySend, connect, listen and closeFlow fail with SIDECAR_GONE', async (t) => {
  const { m, kill } = await doomedSidecar(t)
  const ch = await m.openChannel()
  const flow = await ch.connect(ECHO_IP(), ECHO_PORT(), 10000)
  const msg = payload(16)
  await ch.send(flow, msg)
  assert.ok((await ch.recv()).data.equals(msg))
  await kill() // SIGKILLed and exited
  await rejectsWith(ch.send(flow, msg), codes.SIDECAR_GONE)
  throwsWith(() => ch.trySend(flow, msg), codes.SIDECAR_GONE)
  await rejectsWith(ch.connect(ECHO_IP(), ECHO_PORT(), 10000), codes.SIDECAR_GONE)
  await rejectsWith(ch.listen(freshPort()), codes.SIDECAR_GONE)
  await rejectsWith(ch.closeFlow(flow), codes.SIDECAR_GONE)
  await rejectsWith(ch.recv(), codes.SIDECAR_GONE)
  assert.equal(m.isSidecarGone(), true)
  await ch.close()
})
