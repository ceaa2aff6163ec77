'use strict'
// Zero-copy messages against the echo server (machnet-echo server, Rust): loans
// (channel.loan / tryLoan → Loan) and borrowed receives (channel.recvZc / tryRecvZc → ZcMessage).
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { attach, codes } = require('machnet')
const { SOCKET_B, ECHO_IP, ECHO_PORT, payload, rejectsWith, throwsWith } = require('./helpers.js')

const MiB = 1024 * 1024
let machnet

before(async () => {
  machnet = await attach(SOCKET_B())
})

/** A fresh channel with a flow to the echo server; `close()` at the end. */
async function echoChannel() {
  const ch = await machnet.openChannel()
  const flow = await ch.connect(ECHO_IP(), ECHO_PORT())
  return { ch, flow }
}

/** Sends `bytes` through a loan. */
async function loanSend(ch, flow, bytes) {
  const loan = await ch.loan(flow, bytes.length)
  assert.equal(loan.length, bytes.length)
  assert.equal(loan.data.length, bytes.length)
  bytes.copy(loan.data)
  loan.commit()
  assert.ok(loan.done)
}

test('zero-copy echo of 1 B, 64 KiB and 8 MiB is byte-identical and in order', async () => {
  const { ch, flow } = await echoChannel()
  try {
    const sizes = [1, 64 * 1024, 8 * MiB, 1, 64 * 1024, 8 * MiB, 1, 1, 1, 1, 64 * 1024, 64 * 1024]
    const sent = sizes.map((n, i) => payload(n, i))
    const got = []
    // Receive while sending: borrowed receives, copied out before release.
    const receiving = (async () => {
      for (let i = 0; i < sent.length; i++) {
        const msg = await ch.recvZc()
        try {
          assert.ok(msg.flow.equals(flow))
          assert.ok(Buffer.isBuffer(msg.data))
          got.push(Buffer.from(msg.data))
        } finally {
          msg.release()
        }
      }
    })()
    for (const m of sent) await loanSend(ch, flow, m)
    await receiving
    assert.deepEqual(got.map((b) => b.length), sizes)
    for (let i = 0; i < sent.length; i++) assert.ok(got[i].equals(sent[i]), `message ${i} differs`)
  } finally {
    await ch.close()
  }
})

test('a loan without commit sends nothing; the next send works', async () => {
  const { ch, flow } = await echoChannel()
  try {
    const a = await ch.loan(flow, 100)
    a.data.write('never')
    a.cancel()
    assert.ok(a.done)
    assert.equal(a.data.length, 0, 'the Buffer of an ended loan is detached')
    const b = ch.tryLoan(flow, 10)
    assert.ok(b)
    b.cancel()
    await ch.send(flow, Buffer.from('after'))
    await loanSend(ch, flow, Buffer.from('after2'))
    assert.equal(String((await ch.recv()).data), 'after')
    assert.equal(String((await ch.recv()).data), 'after2')
  } finally {
    await ch.close()
  }
})

test('a partial commit sends only those bytes', async () => {
  const { ch, flow } = await echoChannel()
  try {
    for (const [size, used] of [[1000, 10], [64 * 1024, 1], [8 * MiB, 8 * MiB - 1]]) {
      const bytes = payload(size)
      const loan = await ch.loan(flow, size)
      bytes.copy(loan.data)
      loan.commit(used)
      const { data } = await ch.recv()
      assert.equal(data.length, used)
      assert.ok(data.equals(bytes.subarray(0, used)))
    }
  } finally {
    await ch.close()
  }
})

test('loan misuse: bad lengths, commit and cancel twice, views of an ended loan', async () => {
  const { ch, flow } = await echoChannel()
  try {
    const loan = await ch.loan(flow, 8)
    for (const bad of [0, 9, -1, 1.5]) throwsWith(() => loan.commit(bad), codes.OUT_OF_RANGE, RangeError)
    throwsWith(() => loan.commit('3'), codes.INVALID_ARG_TYPE, TypeError)
    assert.ok(!loan.done, 'a refused length keeps the loan')
    const view = loan.data.subarray(2)
    loan.data.write('abc')
    loan.commit(3)
    throwsWith(() => loan.commit(3), codes.INVALID_ARGUMENT)
    throwsWith(() => loan.cancel(), codes.INVALID_ARGUMENT)
    assert.equal(loan.data.length, 0)
    assert.equal(view.length, 0, 'views of the loan are detached too')
    view[0] = 1 // goes nowhere
    assert.equal(String((await ch.recv()).data), 'abc')
    await rejectsWith(ch.loan(flow, 0), codes.INVALID_ARGUMENT)
    await rejectsWith(ch.loan(flow, ch.maxMessageLen + 1), codes.MESSAGE_TOO_LARGE)
    await rejectsWith(ch.loan(flow, -1), codes.OUT_OF_RANGE, RangeError)
    await rejectsWith(ch.loan({}, 1), codes.INVALID_ARG_TYPE, TypeError)
    throwsWith(() => ch.tryLoan(flow, 0), codes.INVALID_ARGUMENT)
  } finally {
    await ch.close()
  }
})

test('sends made while a loan is out wait for it, in call order', async () => {
  const { ch, flow } = await echoChannel()
  try {
    const loan = await ch.loan(flow, 3)
    loan.data.write('one')
    assert.equal(ch.tryLoan(flow, 1), null, 'one loan at a time')
    assert.equal(ch.trySend(flow, Buffer.from('x')), false)
    const two = ch.send(flow, Buffer.from('two'))
    const three = ch.loan(flow, 5)
    loan.commit()
    await two
    const l3 = await three
    l3.data.write('three')
    l3.commit()
    for (const want of ['one', 'two', 'three']) assert.equal(String((await ch.recv()).data), want)
  } finally {
    await ch.close()
  }
})

test('borrowed receive: release rules, one out at a time, copying receives go on', async () => {
  const { ch, flow } = await echoChannel()
  try {
    for (const m of ['hello', 'second', 'third']) await ch.send(flow, Buffer.from(m))
    const msg = await ch.recvZc()
    assert.ok(msg.flow.equals(flow))
    assert.equal(msg.flow, flow, 'the Flow object connect returned')
    const view = msg.data.subarray(1)
    assert.equal(String(msg.data), 'hello')
    throwsWith(() => ch.tryRecvZc(), codes.WOULD_BLOCK)
    assert.equal(String((await ch.recv()).data), 'second') // a copying receive goes on
    const next = ch.recvZc() // waits for the release
    assert.equal(String(view), 'ello')
    msg.release()
    assert.ok(msg.released)
    assert.equal(msg.data.length, 0, 'a released message reads as empty')
    assert.equal(view.length, 0, 'views of it too')
    throwsWith(() => msg.release(), codes.INVALID_ARGUMENT)
    const m3 = await next
    assert.equal(String(m3.data), 'third')
    m3.release()
    assert.equal(ch.tryRecvZc(), null)
  } finally {
    await ch.close()
  }
})

test('closing the channel with a loan and a borrowed message out', async () => {
  const { ch, flow } = await echoChannel()
  await ch.send(flow, Buffer.from('x'))
  const msg = await ch.recvZc()
  const loan = await ch.loan(flow, 4)
  const pending = rejectsWith(ch.recvZc(), codes.CHANNEL_CLOSED) // waits for the release
  await ch.close()
  await pending
  loan.data.write('late') // the memory stays mapped
  throwsWith(() => loan.commit(), codes.CHANNEL_CLOSED)
  assert.ok(loan.done)
  assert.equal(String(msg.data), 'x')
  msg.release()
  await rejectsWith(ch.loan(flow, 1), codes.CHANNEL_CLOSED)
  await rejectsWith(ch.recvZc(), codes.CHANNEL_CLOSED)
  throwsWith(() => ch.tryRecvZc(), codes.CHANNEL_CLOSED)
  throwsWith(() => ch.tryLoan(flow, 1), codes.CHANNEL_CLOSED)
})

after(async () => {
  if (machnet) await machnet.close()
})
