package io.github.machnetrs.machnet

import io.github.machnetrs.machnet.ffi.MachnetException as Raw

/**
 * What kind of failure an error is, the same in every Machnet binding (the Rust client's
 * `ErrorKind`). [code] is the stable code name every binding reports (Python `exc.code`,
 * Node.js `err.code`, Go `Error.Code`, C# `CodeName`).
 */
enum class ErrorKind(val code: String) {
    WOULD_BLOCK("ERR_MACHNET_WOULD_BLOCK"),
    TIMED_OUT("ERR_MACHNET_TIMEOUT"),
    INTERRUPTED("ERR_MACHNET_INTERRUPTED"),
    INVALID_ARGUMENT("ERR_MACHNET_INVALID_ARGUMENT"),
    MESSAGE_TOO_LARGE("ERR_MACHNET_MESSAGE_TOO_LARGE"),
    BUFFER_TOO_SMALL("ERR_MACHNET_BUFFER_TOO_SMALL"),
    FLOW_CLOSED("ERR_MACHNET_FLOW_CLOSED"),
    FLOW_RESET("ERR_MACHNET_FLOW_RESET"),
    CONNECTION_REFUSED("ERR_MACHNET_CONNECTION_REFUSED"),
    CHANNEL_CLOSED("ERR_MACHNET_CHANNEL_CLOSED"),
    SIDECAR_UNREACHABLE("ERR_MACHNET_SIDECAR_UNREACHABLE"),
    SIDECAR_GONE("ERR_MACHNET_SIDECAR_GONE"),
    REFUSED("ERR_MACHNET_REFUSED"),
    PERMISSION_DENIED("ERR_MACHNET_PERMISSION_DENIED"),
    VERSION_MISMATCH("ERR_MACHNET_VERSION_MISMATCH"),
    EXHAUSTED("ERR_MACHNET_EXHAUSTED"),
    ADDRESS_IN_USE("ERR_MACHNET_PORT_IN_USE"),
    PROTOCOL("ERR_MACHNET_PROTOCOL"),
    IO("ERR_MACHNET_IO"),
}

/**
 * Every failure of this library (unchecked). [kind] and [code] name the kind of failure,
 * [errno] is the POSIX errno the C ABI reports for it, [reason] the close reason the sidecar
 * gave (`"reset"`, `"graceful"`, `"refused"`, ...) when there is one. Subclasses refine the
 * common cases; catch this class for all of them.
 */
open class MachnetException internal constructor(
    message: String,
    val kind: ErrorKind,
    val errno: Int,
    val reason: String?,
) : RuntimeException(message) {
    /** The stable code name of [kind], e.g. `ERR_MACHNET_FLOW_CLOSED`. */
    val code: String get() = kind.code
}

/** A call did not complete within its timeout (`ERR_MACHNET_TIMEOUT`). */
class MachnetTimeoutException internal constructor(message: String, errno: Int, reason: String?) :
    MachnetException(message, ErrorKind.TIMED_OUT, errno, reason)

/** An argument the call cannot accept: an empty message, a bad port or address, a flow of
 *  another channel, a buffer too small for the next message. */
class InvalidArgumentException internal constructor(message: String, kind: ErrorKind, errno: Int, reason: String?) :
    MachnetException(message, kind, errno, reason)

/** The message is larger than the channel allows (`ERR_MACHNET_MESSAGE_TOO_LARGE`). */
class MessageTooLargeException internal constructor(message: String, errno: Int, reason: String?) :
    MachnetException(message, ErrorKind.MESSAGE_TOO_LARGE, errno, reason)

/** The flow is closed: gracefully, by this application, or (see [ConnectionResetException])
 *  because it was reset. */
open class FlowClosedException internal constructor(message: String, kind: ErrorKind, errno: Int, reason: String?) :
    MachnetException(message, kind, errno, reason)

/** The flow was reset, aborted or timed out. */
class ConnectionResetException internal constructor(message: String, kind: ErrorKind, errno: Int, reason: String?) :
    FlowClosedException(message, kind, errno, reason)

/** Nobody listens on the remote port (`ERR_MACHNET_CONNECTION_REFUSED`). */
class ConnectionRefusedException internal constructor(message: String, errno: Int, reason: String?) :
    MachnetException(message, ErrorKind.CONNECTION_REFUSED, errno, reason)

/** The channel was closed (by this application, or by the sidecar). */
class ChannelClosedException internal constructor(message: String, errno: Int, reason: String?) :
    MachnetException(message, ErrorKind.CHANNEL_CLOSED, errno, reason)

/** The sidecar's control socket cannot be reached: not running, wrong path, permissions. */
class SidecarUnreachableException internal constructor(message: String, errno: Int, reason: String?) :
    MachnetException(message, ErrorKind.SIDECAR_UNREACHABLE, errno, reason)

/** The sidecar exited, crashed or is shutting down. */
class SidecarGoneException internal constructor(message: String, kind: ErrorKind, errno: Int, reason: String?) :
    MachnetException(message, kind, errno, reason)

/** The sidecar refused to attach this process (user not allowed, protocol version). */
class AttachRefusedException internal constructor(message: String, kind: ErrorKind, errno: Int, reason: String?) :
    MachnetException(message, kind, errno, reason)

/** Another channel already listens on the port (`ERR_MACHNET_PORT_IN_USE`). */
class PortInUseException internal constructor(message: String, errno: Int, reason: String?) :
    MachnetException(message, ErrorKind.ADDRESS_IN_USE, errno, reason)

/** A call sleeping on a channel was interrupted ([Channel.interrupt]). */
class MachnetInterruptedException internal constructor(message: String, errno: Int, reason: String?) :
    MachnetException(message, ErrorKind.INTERRUPTED, errno, reason)

internal object Errors {
    private class Fields(val kind: ErrorKind, val detail: String, val errno: Int, val reason: String?)

    private fun fields(e: Raw): Fields = when (e) {
        is Raw.WouldBlock -> Fields(ErrorKind.WOULD_BLOCK, e.detail, e.errno, e.reason)
        is Raw.TimedOut -> Fields(ErrorKind.TIMED_OUT, e.detail, e.errno, e.reason)
        is Raw.Interrupted -> Fields(ErrorKind.INTERRUPTED, e.detail, e.errno, e.reason)
        is Raw.InvalidArgument -> Fields(ErrorKind.INVALID_ARGUMENT, e.detail, e.errno, e.reason)
        is Raw.MessageTooLarge -> Fields(ErrorKind.MESSAGE_TOO_LARGE, e.detail, e.errno, e.reason)
        is Raw.BufferTooSmall -> Fields(ErrorKind.BUFFER_TOO_SMALL, e.detail, e.errno, e.reason)
        is Raw.FlowClosed -> Fields(ErrorKind.FLOW_CLOSED, e.detail, e.errno, e.reason)
        is Raw.FlowReset -> Fields(ErrorKind.FLOW_RESET, e.detail, e.errno, e.reason)
        is Raw.ConnectionRefused -> Fields(ErrorKind.CONNECTION_REFUSED, e.detail, e.errno, e.reason)
        is Raw.ChannelClosed -> Fields(ErrorKind.CHANNEL_CLOSED, e.detail, e.errno, e.reason)
        is Raw.SidecarUnreachable -> Fields(ErrorKind.SIDECAR_UNREACHABLE, e.detail, e.errno, e.reason)
        is Raw.SidecarGone -> Fields(ErrorKind.SIDECAR_GONE, e.detail, e.errno, e.reason)
        is Raw.Refused -> Fields(ErrorKind.REFUSED, e.detail, e.errno, e.reason)
        is Raw.PermissionDenied -> Fields(ErrorKind.PERMISSION_DENIED, e.detail, e.errno, e.reason)
        is Raw.VersionMismatch -> Fields(ErrorKind.VERSION_MISMATCH, e.detail, e.errno, e.reason)
        is Raw.Exhausted -> Fields(ErrorKind.EXHAUSTED, e.detail, e.errno, e.reason)
        is Raw.AddressInUse -> Fields(ErrorKind.ADDRESS_IN_USE, e.detail, e.errno, e.reason)
        is Raw.Protocol -> Fields(ErrorKind.PROTOCOL, e.detail, e.errno, e.reason)
        is Raw.Io -> Fields(ErrorKind.IO, e.detail, e.errno, e.reason)
    }

    /** The one table from an error kind (and close reason) to this library's classes. */
    fun of(kind: ErrorKind, msg: String, errno: Int = 0, reason: String? = null): MachnetException = when (kind) {
        ErrorKind.TIMED_OUT -> MachnetTimeoutException(msg, errno, reason)
        ErrorKind.INVALID_ARGUMENT, ErrorKind.BUFFER_TOO_SMALL -> InvalidArgumentException(msg, kind, errno, reason)
        ErrorKind.MESSAGE_TOO_LARGE -> MessageTooLargeException(msg, errno, reason)
        ErrorKind.FLOW_CLOSED -> when (reason) {
            "reset", "aborted", "timed_out", "protocol_violation" -> ConnectionResetException(msg, kind, errno, reason)
            else -> FlowClosedException(msg, kind, errno, reason)
        }
        ErrorKind.FLOW_RESET -> ConnectionResetException(msg, kind, errno, reason)
        ErrorKind.CONNECTION_REFUSED -> ConnectionRefusedException(msg, errno, reason)
        ErrorKind.CHANNEL_CLOSED -> ChannelClosedException(msg, errno, reason)
        ErrorKind.SIDECAR_UNREACHABLE -> SidecarUnreachableException(msg, errno, reason)
        ErrorKind.SIDECAR_GONE -> SidecarGoneException(msg, kind, errno, reason)
        ErrorKind.PERMISSION_DENIED, ErrorKind.VERSION_MISMATCH -> AttachRefusedException(msg, kind, errno, reason)
        ErrorKind.ADDRESS_IN_USE -> PortInUseException(msg, errno, reason)
        ErrorKind.INTERRUPTED -> MachnetInterruptedException(msg, errno, reason)
        else -> MachnetException(msg, kind, errno, reason)
    }

    fun convert(e: Raw): MachnetException {
        val f = fields(e)
        return of(f.kind, f.detail, f.errno, f.reason).also { it.initCause(e) }
    }

    /** An argument this facade refuses before calling the library. */
    fun invalid(msg: String): MachnetException = of(ErrorKind.INVALID_ARGUMENT, msg, 22)
}

/** Runs a call of the generated layer, turning its errors into this library's exceptions. */
internal inline fun <T> call(block: () -> T): T =
    try {
        block()
    } catch (e: Raw) {
        throw Errors.convert(e)
    }
