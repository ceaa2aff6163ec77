// The API of the `machnet` package: the declarations napi-rs generates from the Rust sources
// (binding.d.ts), plus the async iteration and error codes that index.js adds.
import type { EventEmitter } from 'node:events'
import type { Message } from './binding'

export { attach, Machnet, Channel, Flow, Message, Loan, ZcMessage } from './binding'

declare module './binding' {
  /**
   * A flow is an `EventEmitter` with the events of a `net.Socket` (emitted while the channel's
   * receive side reads its notifications: while a `recv()` or `for await` is pending, or on
   * `tryRecv()`, in order with the messages):
   *
   * - `'end'`: the peer closed the flow gracefully; every message it sent was delivered
   *   before. This side is closed too (like `allowHalfOpen: false`): later sends reject with
   *   `ERR_MACHNET_FLOW_CLOSED`.
   * - `'error'` `(err)`: the flow ended abnormally; `err.code` is `ECONNRESET` (the peer reset
   *   or went away), `ETIMEDOUT` (it stopped answering), `ECONNREFUSED`, `EMSGSIZE`, `ENOBUFS`,
   *   `ESHUTDOWN` (the sidecar is shutting down), `EPROTO`, `ECONNABORTED` (unknown reason) or
   *   `ERR_MACHNET_SIDECAR_GONE`, and `err.flow` is the flow. Unlike on a socket, it is only
   *   emitted to `'error'` listeners: an unhandled flow error does not throw.
   * - `'close'` `(hadError, err?)`: the flow is gone (always the last event): after `'end'`, an
   *   abnormal end (`hadError` true, with the error), `closeFlow`/`abortFlow`, or when its channel
   *   closes.
   */
  interface Flow extends EventEmitter {
    on(event: 'end', listener: () => void): this
    on(event: 'error', listener: (err: FlowError) => void): this
    on(event: 'close', listener: (hadError: boolean, err?: FlowError) => void): this
    once(event: 'end', listener: () => void): this
    once(event: 'error', listener: (err: FlowError) => void): this
    once(event: 'close', listener: (hadError: boolean, err?: FlowError) => void): this
  }
  interface Machnet {
    /**
     * `await using m = await attach()`: closes the attachment and its channels when the block
     * ends, like `machnet.close()` (where the runtime has `Symbol.asyncDispose`).
     */
    [Symbol.asyncDispose](): Promise<void>
  }
  interface Channel {
    /**
     * Receives the next message on any flow of this channel, waiting at most `timeoutMs`
     * milliseconds (an integer 0 ..= 2147483647): then it rejects with `ERR_MACHNET_TIMEOUT`,
     * and a message that arrives later goes to the next receive. Without `timeoutMs` it waits
     * until a message arrives or the channel closes.
     */
    recv(timeoutMs?: number): Promise<Message>
    /**
     * Every message of the channel, in arrival order, until the channel is closed with
     * `channel.close()` (the iteration then ends); other errors are thrown.
     *
     * ```js
     * for await (const { flow, data } of channel) await channel.send(flow, data)
     * ```
     */
    [Symbol.asyncIterator](): AsyncGenerator<Message, void, undefined>
    /**
     * `await using ch = await m.openChannel()`: closes the channel gracefully when the block
     * ends, like `channel.close()` (where the runtime has `Symbol.asyncDispose`).
     */
    [Symbol.asyncDispose](): Promise<void>
  }
}

/** The stable `code` values of the errors this package throws or rejects with. */
export declare const codes: {
  /** try_send only: the request ring is full now. */
  readonly WOULD_BLOCK: 'ERR_MACHNET_WOULD_BLOCK'
  /** The operation did not complete within its timeout. */
  readonly TIMEOUT: 'ERR_MACHNET_TIMEOUT'
  /** A wait was interrupted. */
  readonly INTERRUPTED: 'ERR_MACHNET_INTERRUPTED'
  /** The sidecar or library rejected an argument (empty message, port 0, unknown engine, a flow of another channel). */
  readonly INVALID_ARGUMENT: 'ERR_MACHNET_INVALID_ARGUMENT'
  /** The message exceeds the channel's `maxMessageLen`. */
  readonly MESSAGE_TOO_LARGE: 'ERR_MACHNET_MESSAGE_TOO_LARGE'
  /** The next message does not fit the buffer (it stays queued). */
  readonly BUFFER_TOO_SMALL: 'ERR_MACHNET_BUFFER_TOO_SMALL'
  /** The flow is closed (by the peer, the sidecar, or this application). */
  readonly FLOW_CLOSED: 'ERR_MACHNET_FLOW_CLOSED'
  /** The flow was reset or aborted. */
  readonly FLOW_RESET: 'ERR_MACHNET_FLOW_RESET'
  /** The remote host refused the connection (nothing listens on the port). */
  readonly CONNECTION_REFUSED: 'ERR_MACHNET_CONNECTION_REFUSED'
  /** The channel was closed (by `close()`, its Machnet's `close()`, or by the sidecar). */
  readonly CHANNEL_CLOSED: 'ERR_MACHNET_CHANNEL_CLOSED'
  /** The sidecar's control socket could not be reached. */
  readonly SIDECAR_UNREACHABLE: 'ERR_MACHNET_SIDECAR_UNREACHABLE'
  /** The sidecar exited or crashed. */
  readonly SIDECAR_GONE: 'ERR_MACHNET_SIDECAR_GONE'
  /** The sidecar refused the request for another reason. */
  readonly REFUSED: 'ERR_MACHNET_REFUSED'
  /** The sidecar does not allow this user or group. */
  readonly PERMISSION_DENIED: 'ERR_MACHNET_PERMISSION_DENIED'
  /** The sidecar speaks another control protocol version. */
  readonly VERSION_MISMATCH: 'ERR_MACHNET_VERSION_MISMATCH'
  /** The sidecar ran out of channels, ports, connections or ephemeral ports. */
  readonly EXHAUSTED: 'ERR_MACHNET_EXHAUSTED'
  /** Another channel already listens on the port. */
  readonly PORT_IN_USE: 'ERR_MACHNET_PORT_IN_USE'
  /** The sidecar broke the channel or control protocol. */
  readonly PROTOCOL: 'ERR_MACHNET_PROTOCOL'
  /** A system call failed. */
  readonly IO: 'ERR_MACHNET_IO'
  /** The Machnet (attachment) was closed with `close()` (Node.js only). */
  readonly CLOSED: 'ERR_MACHNET_CLOSED'
  /** An argument has the wrong type (a `TypeError`). */
  readonly INVALID_ARG_TYPE: 'ERR_INVALID_ARG_TYPE'
  /** An argument has an unusable value, e.g. an IP that is not dotted IPv4 (a `TypeError`). */
  readonly INVALID_ARG_VALUE: 'ERR_INVALID_ARG_VALUE'
  /** A number is negative, fractional or too large (a `RangeError`). */
  readonly OUT_OF_RANGE: 'ERR_OUT_OF_RANGE'
}

/** One of the {@link codes}. */
export type ErrorCode = (typeof codes)[keyof typeof codes]

/** The errors this package throws or rejects with: `Error`, `TypeError` or `RangeError`. */
export interface MachnetError extends Error {
  readonly code: ErrorCode
}

/** The errno-style codes of a flow's `'error'` (see {@link Flow}). */
export type FlowErrorCode =
  | 'ECONNRESET'
  | 'ETIMEDOUT'
  | 'ECONNREFUSED'
  | 'EMSGSIZE'
  | 'ENOBUFS'
  | 'ESHUTDOWN'
  | 'EPROTO'
  | 'ECONNABORTED'
  | 'ERR_MACHNET_SIDECAR_GONE'

/** Why a flow ended abnormally: emitted with `'error'` and `'close'` on the flow. */
export interface FlowError extends Error {
  readonly code: FlowErrorCode
  /** The flow that ended. */
  readonly flow: import('./binding').Flow
}
