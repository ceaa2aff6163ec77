'use strict'
// recv(timeoutMs): rejects with ERR_MACHNET_TIMEOUT when nothing arrives in time, never
// consumes a message it did not deliver, and leaves other pending receives in order.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { codes } = require('machnet')
const { linkedPair, payload, rejectsWith } = require('./helpers.js')

/** A linked pair whose server knows the flow (it received one message on it). */
async function pairWithServerFlow() {
  const p = await linkedPair()
  await p.client.send(p.flow, Buffer.from('hello'))
  const { flow } = await p.server.recv(10000)
  return { ...p, serverFlow: flow }
}

test('recv(timeoutMs) times out, and not early', async () => {
  const p = await linkedPair()
  try {
    const start = process.hrtime.bigint()
    await rejectsWith(p.client.recv(150), codes.TIMEOUT)
    const ms = Number(process.hrtime.bigint() - start) / 1e6
    assert.ok(ms >= 145, `returned after ${ms} ms`)
    await rejectsWith(p.client.recv(0), codes.TIMEOUT)
  } finally {
    await p.close()
  }
})

test('a message arriving after a timed-out receive goes to the next receive', async () => {
  const p = await pairWithServerFlow()
  try {
    await rejectsWith(p.client.recv(50), codes.TIMEOUT)
    const msg = payload(3000)
    await p.server.send(p.serverFlow, msg)
    const got = await p.client.recv()
    assert.ok(got.data.equals(msg), 'byte-identical')
    // A message already waiting is returned even with a zero timeout.
    const msg2 = payload(17)
    await p.server.send(p.serverFlow, msg2)
    let second
    for (let i = 0; i < 100 && !second; i++) {
      second = await p.client.recv(0).catch((e) => {
        if (e.code !== codes.TIMEOUT) throw e
        return new Promise((resolve) => setTimeout(() => resolve(undefined), 20))
      })
    }
    assert.ok(second && second.data.equals(msg2), 'the waiting message, with recv(0)')
  } finally {
    await p.close()
  }
})

test('a timeout cancels only its own receive; the others keep their order', async () => {
  const p = await pairWithServerFlow()
  try {
    const first = p.client.recv() // no timeout
    const timed = p.client.recv(40)
    await rejectsWith(timed, codes.TIMEOUT)
    const [m1, m2] = [payload(10), payload(20)]
    await p.server.send(p.serverFlow, m1)
    await p.server.send(p.serverFlow, m2)
    assert.ok((await first).data.equals(m1), 'the earlier receive gets the first message')
    assert.ok((await p.client.recv(10000)).data.equals(m2), 'the next receive gets the second')
  } finally {
    await p.close()
  }
})

test('recv(timeoutMs): argument validation, closed channel', async () => {
  const p = await linkedPair()
  try {
    await rejectsWith(p.client.recv(-1), codes.OUT_OF_RANGE, RangeError)
    await rejectsWith(p.client.recv(1.5), codes.OUT_OF_RANGE, RangeError)
    await rejectsWith(p.client.recv(2 ** 31), codes.OUT_OF_RANGE, RangeError)
    await rejectsWith(p.client.recv('10'), codes.INVALID_ARG_TYPE, TypeError)
  } finally {
    await p.close()
  }
  await rejectsWith(p.client.recv(100), codes.CHANNEL_CLOSED)
})
