'use strict'
// Messages of every size through the echo server (machnet-echo server, Rust), byte for byte.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { attach } = require('machnet')
const { SOCKET_B, ECHO_IP, ECHO_PORT, payload } = require('./helpers.js')

let machnet
let ch
let flow

before(async () => {
  machnet = await attach(SOCKET_B())
  ch = await machnet.openChannel()
  flow = await ch.connect(ECHO_IP(), ECHO_PORT())
})
after(async () => {
  if (ch) await ch.close()
})

test('attachment and flow describe the sidecars', () => {
  assert.equal(machnet.localIp, '127.0.0.2')
  assert.ok(machnet.engines >= 1)
  assert.equal(ch.maxMessageLen, machnet.maxMessageLen)
  assert.equal(flow.localIp, '127.0.0.2')
  assert.equal(flow.remoteIp, ECHO_IP())
  assert.equal(flow.remotePort, ECHO_PORT())
  assert.ok(flow.handle > 0)
  assert.match(String(flow), /^flow \d+ \(127\.0\.0\.2:\d+ -> 127\.0\.0\.1:\d+\)$/)
})

const MiB = 1024 * 1024
for (const size of [1, 2, 7, 64, 1000, 4096, 8191, 8193, 65536, 1 * MiB + 3, 8 * MiB]) {
  test(`echo of ${size} B is byte-identical`, async () => {
    const sent = payload(size)
    await ch.send(flow, sent)
    const { flow: from, data } = await ch.recv()
    assert.ok(from.equals(flow), `reply on ${from}, expected ${flow}`)
    assert.equal(from, flow, 'messages carry the Flow object connect returned')
    assert.ok(Buffer.isBuffer(data))
    assert.equal(data.length, size)
    assert.ok(data.equals(sent), `echo of ${size} B differs`)
  })
}

test('the largest message is exactly maxMessageLen', async () => {
  const sent = payload(ch.maxMessageLen)
  await ch.send(flow, sent)
  const { data } = await ch.recv()
  assert.ok(data.equals(sent))
})

test('a received message keeps its bytes while later messages arrive', async () => {
  // Messages pass through one scratch buffer on their way to their own Buffers.
  const sent = [payload(64), Buffer.alloc(64, 0xee), payload(3000), Buffer.alloc(5, 1)]
  const got = []
  for (const m of sent) {
    await ch.send(flow, m)
    got.push((await ch.recv()).data)
  }
  got.forEach((data, i) => assert.ok(data.equals(sent[i]), `message ${i} changed`))
})

test('a Uint8Array view is sent from its own offset and length', async () => {
  const backing = payload(1000)
  const view = new Uint8Array(backing.buffer, backing.byteOffset + 100, 300)
  await ch.send(flow, view)
  const { data } = await ch.recv()
  assert.ok(data.equals(backing.subarray(100, 400)))
})

test('many sends without awaiting: back-pressure keeps order and content', async () => {
  // 40 MiB in flight exceeds the 8 MiB request ring: later sends wait for room.
  const msgs = Array.from({ length: 40 }, (_, i) => payload(MiB, i))
  const sends = msgs.map((m) => ch.send(flow, m))
  for (let i = 0; i < msgs.length; i++) {
    const { data } = await ch.recv()
    assert.equal(data.readBigUInt64LE(0), BigInt(i), `message ${i} out of order`)
    assert.ok(data.equals(msgs[i]), `message ${i} differs`)
  }
  await Promise.all(sends)
})

test('trySend queues when the ring has room', async () => {
  const m = payload(100)
  assert.equal(ch.trySend(flow, m), true)
  const { data } = await ch.recv()
  assert.ok(data.equals(m))
})

test('tryRecv returns null when nothing waits, then the message', async () => {
  assert.equal(ch.tryRecv(), null)
  const m = payload(33)
  await ch.send(flow, m)
  let got = null
  while (got === null) {
    await new Promise((r) => setImmediate(r))
    got = ch.tryRecv()
  }
  assert.ok(got.flow.equals(flow))
  assert.ok(got.data.equals(m))
})
