'use strict'
// Shared set-up of the tests: the sidecars and the echo server are started by ci/node.sh (or by
// hand, see README.md) and named by environment variables.
const assert = require('node:assert/strict')
const crypto = require('node:crypto')

function env(name) {
  const v = process.env[name]
  if (!v) throw new Error(`${name} is not set: run the tests through ci/node.sh (see README.md)`)
  return v
}

/** Sidecar A (127.0.0.1): the echo server listens on it. */
const SOCKET_A = () => env('MACHNET_TEST_SOCKET_A')
/** Sidecar B (127.0.0.2): the tests' clients attach to it. */
const SOCKET_B = () => env('MACHNET_TEST_SOCKET_B')
const ECHO_IP = () => process.env.MACHNET_TEST_ECHO_IP || '127.0.0.1'
const ECHO_PORT = () => Number(process.env.MACHNET_TEST_ECHO_PORT || 888)

/** Random bytes of `n` length, with the first 8 bytes set to `tag` when given. */
function payload(n, tag) {
  const b = crypto.randomBytes(n)
  if (tag !== undefined && n >= 8) b.writeBigUInt64LE(BigInt(tag), 0)
  return b
}

/** Asserts that `p` rejects with an error of `code` (and constructor `type`, default Error). */
async function rejectsWith(p, code, type = Error) {
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof type, `expected a ${type.name}, got ${err && err.constructor.name}: ${err}`)
    assert.equal(err.code, code, `wrong code for: ${err.message}`)
    return true
  })
}

/** Asserts that `f()` throws an error of `code` (and constructor `type`). */
function throwsWith(f, code, type = Error) {
  assert.throws(f, (err) => {
    assert.ok(err instanceof type, `expected a ${type.name}, got ${err && err.constructor.name}: ${err}`)
    assert.equal(err.code, code, `wrong code for: ${err.message}`)
    return true
  })
}

let nextPort = 2000 + (process.pid % 1000) * 8
/** A Machnet port for a test listener, distinct per call and per process. */
function freshPort() {
  return nextPort++
}

/**
 * A listening channel on sidecar A and a client channel on sidecar B with a flow between them
 * (`flow` is the client's end). Call `close()` at the end.
 */
async function linkedPair() {
  const { attach } = require('machnet')
  const server = await (await attach(SOCKET_A())).openChannel()
  const client = await (await attach(SOCKET_B())).openChannel()
  const port = freshPort()
  await server.listen(port)
  const flow = await client.connect('127.0.0.1', port)
  const close = () => Promise.all([server.close(), client.close()])
  return { server, client, port, flow, close }
}

module.exports = {
  linkedPair, SOCKET_A, SOCKET_B, ECHO_IP, ECHO_PORT, payload, rejectsWith, throwsWith, freshPort }
