package io.github.machnetrs.machnet

import io.github.machnetrs.machnet.ffi.Flow as RawFlow

/**
 * One Machnet connection: a handle valid on the channel that created ([Channel.connect]) or
 * accepted it (the flow of the messages a listener receives). Equal flows are the same
 * connection; a received message's flow equals the one `connect` returned.
 */
class Flow internal constructor(
    internal val raw: RawFlow,
    /** The sidecar's handle of the flow (unique within its channel, never 0). */
    val handle: Long,
    /** The channel the flow belongs to (flows are equal when channel and handle are). */
    private val owner: Any,
) {
    /** The local (sidecar) IPv4 address. */
    val localIp: String get() = raw.localIp()

    /** The local Machnet port. */
    val localPort: Int get() = raw.localPort().toInt()

    /** The remote IPv4 address. */
    val remoteIp: String get() = raw.remoteIp()

    /** The remote Machnet port. */
    val remotePort: Int get() = raw.remotePort().toInt()

    // Without a call into the library: the sidecar never reuses a handle while its channel
    // lives (docs/CHANNEL.md §3).
    override fun equals(other: Any?): Boolean = other is Flow && other.owner === owner && other.handle == handle

    override fun hashCode(): Int = java.lang.Long.hashCode(handle) * 31 + System.identityHashCode(owner)

    override fun toString(): String = raw.toString()
}

/** A received message: the flow it arrived on and its bytes, whole. */
class Message internal constructor(
    /** The flow the message arrived on. */
    val flow: Flow,
    /** The message. */
    val data: ByteArray,
) {
    override fun toString(): String = "Message(${data.size} bytes on $flow)"
}

/** What happened to a flow ([FlowEvent.kind]). */
enum class FlowEventKind {
    /** A listener of this channel accepted the flow ([FlowEvent.port]: the port it listens on). */
    ACCEPTED,

    /** The peer closed the flow gracefully: no further message will arrive on it. */
    PEER_CLOSED,

    /** The flow was reset: the peer aborted it or went away. */
    RESET,

    /** The peer stopped answering. */
    TIMED_OUT,

    /** The peer refused the flow. */
    REFUSED,

    /** The flow ended (gracefully, or for [FlowEvent.reason]). */
    CLOSED,

    /** The sidecar could not carry out a request on the flow ([FlowEvent.request]). */
    REQUEST_FAILED,
}

/** A flow event ([Channel.nextEvent]). */
class FlowEvent internal constructor(
    /** What happened. */
    val kind: FlowEventKind,
    /** The flow it happened to. */
    val flow: Flow,
    /** The close reason (`"graceful"`, `"reset"`, `"timed_out"`, ...), if any. */
    val reason: String?,
    /** [FlowEventKind.ACCEPTED]: the listening port; else null. */
    val port: Int?,
    /** [FlowEventKind.REQUEST_FAILED]: `"send"`, `"close"`, `"abort"` or `"other"`; else null. */
    val request: String?,
) {
    override fun toString(): String =
        "FlowEvent($kind, $flow" + (reason?.let { ", reason=$it" } ?: "") +
            (port?.let { ", port=$it" } ?: "") + (request?.let { ", request=$it" } ?: "") + ")"
}
