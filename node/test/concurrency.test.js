'use strict'
// Concurrent flows and channels, and the event loop while a receive is pending.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { attach } = require('machnet')
const { SOCKET_B, ECHO_IP, ECHO_PORT, payload, linkedPair } = require('./helpers.js')

test('8 flows on one channel, 4 messages in flight each, all echoed in order per flow', async () => {
  const m = await attach(SOCKET_B())
  const ch = await m.openChannel()
  try {
    const FLOWS = 8
    const PER_FLOW = 60
    const WINDOW = 4
    const flows = await Promise.all(Array.from({ length: FLOWS }, () => ch.connect(ECHO_IP(), ECHO_PORT())))
    const handles = new Set(flows.map((f) => f.handle))
    assert.equal(handles.size, FLOWS, 'every flow has its own handle')
    const sent = new Map(flows.map((f) => [f.handle, []]))
    const nextRecv = new Map(flows.map((f) => [f.handle, 0]))
    const sendNext = (f) => {
      const list = sent.get(f.handle)
      const m = payload(16 + ((list.length * 37) % 3000), list.length)
      list.push(m)
      return ch.send(f, m)
    }
    for (const f of flows) for (let i = 0; i < WINDOW; i++) await sendNext(f)
    let outstanding = FLOWS * PER_FLOW
    while (outstanding > 0) {
      const { flow, data } = await ch.recv()
      const i = nextRecv.get(flow.handle)
      assert.ok(i !== undefined, `message on unknown ${flow}`)
      const expected = sent.get(flow.handle)[i]
      assert.equal(data.readBigUInt64LE(0), BigInt(i), `${flow}: message ${i} out of order`)
      assert.ok(data.equals(expected), `${flow}: message ${i} differs`)
      nextRecv.set(flow.handle, i + 1)
      outstanding--
      if (sent.get(flow.handle).length < PER_FLOW) await sendNext(flow)
    }
    for (const f of flows) assert.equal(nextRecv.get(f.handle), PER_FLOW)
  } finally {
    await ch.close()
  }
})

test('4 channels in parallel, each with its own flow', async () => {
  const m = await attach(SOCKET_B())
  const chans = await Promise.all([0, 1, 2, 3].map(() => m.openChannel()))
  try {
    await Promise.all(
      chans.map(async (ch, c) => {
        const flow = await ch.connect(ECHO_IP(), ECHO_PORT())
        for (let i = 0; i < 50; i++) {
          const msg = payload(1 + ((i * 977 + c) % 20000), i)
          await ch.send(flow, msg)
          const { data } = await ch.recv()
          assert.ok(data.equals(msg), `channel ${c} message ${i} differs`)
        }
      }),
    )
  } finally {
    await Promise.all(chans.map((ch) => ch.close()))
  }
})

test('timers keep firing while a receive is pending', async () => {
  const { server, client, port, flow, close } = await linkedPair()
  try {
    let received = false
    const pending = server.recv().then((msg) => {
      received = true
      return msg
    })
    // 20 timer ticks while the receive waits: the event loop is not blocked by it.
    let ticks = 0
    await new Promise((resolve) => {
      const t = setInterval(() => {
        ticks++
        assert.equal(received, false, 'nothing was sent yet')
        if (ticks === 20) {
          clearInterval(t)
          resolve()
        }
      }, 5)
    })
    assert.equal(ticks, 20)
    const m = payload(123)
    await client.send(flow, m)
    const msg = await pending
    assert.ok(msg.data.equals(m))
    assert.equal(msg.flow.localPort, port)
    // Reply on the accepted flow.
    const reply = payload(456)
    await server.send(msg.flow, reply)
    const back = await client.recv()
    assert.ok(back.flow.equals(flow))
    assert.ok(back.data.equals(reply))
  } finally {
    await close()
  }
})

test('async iteration yields every message and ends when the channel closes', async () => {
  const { server, client, flow, close } = await linkedPair()
  try {
    const N = 100
    // Echo server in JavaScript: for await over the channel.
    const serving = (async () => {
      let n = 0
      for await (const { flow, data } of server) {
        await server.send(flow, data)
        n++
      }
      return n
    })()
    const msgs = Array.from({ length: N }, (_, i) => payload(1 + i * 101, i))
    for (const m of msgs) await client.send(flow, m)
    let i = 0
    for await (const { data } of client) {
      assert.ok(data.equals(msgs[i]), `message ${i} differs`)
      if (++i === N) break
    }
    assert.equal(client.closed, false, 'break leaves the channel open')
    await server.close()
    assert.equal(await serving, N)
  } finally {
    await close()
  }
})

test('sends blocked by back-pressure complete while a receive is pending on the same channel', async () => {
  const { server, client, flow, close } = await linkedPair()
  try {
    // The server does not read yet: 10 × 8 MiB exceed everything the path can buffer (the
    // client's request ring, the sidecars' 16 MiB send and receive buffers, the server's
    // notification ring), so the last sends wait for room while a receive (which drains the
    // eventfd that also signals room) is pending on the same channel.
    const big = Array.from({ length: 10 }, (_, i) => payload(client.maxMessageLen, i))
    const pendingRecv = client.recv()
    let sendsDone = 0
    const sends = big.map((m) => client.send(flow, m).then(() => sendsDone++))
    await new Promise((r) => setImmediate(r))
    assert.ok(sendsDone < big.length, 'some sends must wait for room')
    for (let i = 0; i < big.length; i++) {
      const { data, flow: from } = await server.recv()
      assert.ok(data.equals(big[i]), `message ${i} differs`)
      if (i === big.length - 1) await server.send(from, Buffer.from('done'))
    }
    await Promise.all(sends)
    assert.equal(sendsDone, big.length)
    assert.equal((await pendingRecv).data.toString(), 'done')
  } finally {
    await close()
  }
})
