#!/usr/bin/env node
'use strict'
// Echo client in Node.js, the counterpart of `machnet-echo client`: keeps WINDOW messages of
// SIZE bytes outstanding on one flow to an echo server, verifies every echo byte for byte and
// reports messages/s and RTT percentiles (one JSON line with --json).
//
//   node bench/echo-client.js --socket /run/machnet/machnet.sock --remote 127.0.0.1 --port 888 \
//       --size 64 --window 1 --duration 3 --warmup 0.5 [--json]
const { attach } = require('machnet')

function parseArgs(argv) {
  const o = { socket: undefined, remote: '127.0.0.1', port: 888, size: 64, window: 1, duration: 3, warmup: 0.5, json: false }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i].replace(/^--/, '')
    if (k === 'json') o.json = true
    else if (k in o) o[k] = typeof o[k] === 'number' ? Number(argv[++i]) : argv[++i]
    else throw new Error(`unknown option ${argv[i]}`)
  }
  return o
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

async function main() {
  const o = parseArgs(process.argv.slice(2))
  const machnet = await attach(o.socket)
  const ch = await machnet.openChannel()
  const flow = await ch.connect(o.remote, o.port)
  const msg = Buffer.alloc(o.size)
  for (let i = 0; i < o.size; i++) msg[i] = (i * 31 + 7) & 0xff
  const sentAt = []
  const rtts = []
  let seq = 0
  const send = () => {
    if (o.size >= 8) msg.writeUInt32LE(seq, 0)
    seq++
    sentAt.push(process.hrtime.bigint())
    // trySend settles synchronously when the ring has room; send() waits for room otherwise.
    return ch.trySend(flow, msg) ? undefined : ch.send(flow, msg)
  }
  const start = process.hrtime.bigint()
  const warmupEnd = start + BigInt(Math.round(o.warmup * 1e9))
  const end = warmupEnd + BigInt(Math.round(o.duration * 1e9))
  for (let i = 0; i < o.window; i++) await send()
  let received = 0
  let counted = 0
  let expectSeq = 0
  let cpuAtWarmup = null // process.cpuUsage() when the measured interval began
  for (;;) {
    const { data } = await ch.recv()
    const now = process.hrtime.bigint()
    if (data.length !== o.size || (o.size >= 8 && data.readUInt32LE(0) !== expectSeq)) {
      throw new Error(`echo ${received} differs from what was sent`)
    }
    if (o.size >= 8) {
      msg.writeUInt32LE(expectSeq, 0)
      if (!data.equals(msg)) throw new Error(`echo ${received} differs from what was sent`)
    }
    expectSeq = (expectSeq + 1) >>> 0
    const t0 = sentAt[received]
    sentAt[received] = undefined
    received++
    if (now >= warmupEnd) {
      if (cpuAtWarmup === null) cpuAtWarmup = process.cpuUsage()
      rtts.push(Number(now - t0) / 1000)
      counted++
    }
    if (now >= end) break
    await send()
  }
  const elapsed = Number(process.hrtime.bigint() - warmupEnd) / 1e9
  const cpu = process.cpuUsage(cpuAtWarmup ?? undefined)
  await ch.close()
  rtts.sort((a, b) => a - b)
  const report = {
    mode: 'machnet-node',
    size: o.size,
    window: o.window,
    flows: 1,
    messages: counted,
    msgs_per_sec: counted / elapsed,
    gbit_per_sec: (counted * o.size * 8) / elapsed / 1e9,
    // User + system CPU of this process per message over the measured interval.
    cpu_us_per_msg: (cpu.user + cpu.system) / counted,
    rtt_us: { p50: percentile(rtts, 50), p99: percentile(rtts, 99), p999: percentile(rtts, 99.9), max: rtts[rtts.length - 1] },
  }
  if (o.json) console.log(JSON.stringify(report))
  else {
    const r = report.rtt_us
    console.log(`node echo client: ${counted} msgs of ${o.size} B, window ${o.window}: ${report.msgs_per_sec.toFixed(0)} msgs/s, RTT p50 ${r.p50.toFixed(1)} us, p99 ${r.p99.toFixed(1)} us, p99.9 ${r.p999.toFixed(1)} us`)
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
