package io.github.machnetrs.machnet

import io.github.machnetrs.machnet.ffi.Machnet as RawMachnet

/**
 * A process's attachment to the Machnet sidecar (its control connection). Open channels with
 * [openChannel]; close the attachment when done (it stays open while channels opened from it
 * are open). Thread-safe.
 *
 * ```java
 * try (Machnet machnet = Machnet.attach("/run/machnet/machnet.sock");
 *      Channel ch = machnet.openChannel()) { ... }
 * ```
 */
class Machnet private constructor(private val raw: RawMachnet) : AutoCloseable {
    companion object {
        /** Attaches to the sidecar at `$MACHNET_SOCKET`, or `/run/machnet/machnet.sock`. */
        @JvmStatic
        fun attach(): Machnet = Machnet(call { RawMachnet.attach(null) })

        /** Attaches to the sidecar whose control socket is [socketPath]. */
        @JvmStatic
        fun attach(socketPath: String): Machnet = Machnet(call { RawMachnet.attach(socketPath) })

        /** The socket path [attach] uses without one. */
        @JvmStatic
        fun defaultSocketPath(): String = io.github.machnetrs.machnet.ffi.defaultSocketPath()

        /** The version of the native library in this jar. */
        @JvmStatic
        fun version(): String = io.github.machnetrs.machnet.ffi.version()

        /** Describes a close reason (`"reset"` gives "reset by the remote host"); null if unknown. */
        @JvmStatic
        fun describeCloseReason(reason: String): String? = io.github.machnetrs.machnet.ffi.describeCloseCode(reason)
    }

    /** The control socket path this attachment used. */
    val socketPath: String get() = raw.socketPath()

    /** The sidecar's IPv4 address (the local address of every flow). */
    val localIp: String get() = raw.localIp()

    /** Number of sidecar engines (valid engine indices are `0 until engines`). */
    val engines: Int get() = raw.engines().toInt()

    /** Largest message the sidecar carries, in bytes. */
    val maxMessageLength: Int get() = raw.maxMessageLen().toInt()

    /** Whether the sidecar is gone (the control connection hung up). Never blocks. */
    val isSidecarGone: Boolean get() = raw.isSidecarGone()

    /** Opens a channel on an engine the sidecar picks. */
    fun openChannel(): Channel = Channel(call { raw.openChannel(null) })

    /** Opens a channel on [engine]. */
    fun openChannel(engine: Int): Channel {
        if (engine !in 0..0xFFFF) throw Errors.invalid("engine must be in 0..65535, got $engine")
        return Channel(call { raw.openChannel(engine.toUShort()) })
    }

    /** Releases this handle of the attachment (channels keep the connection open until closed). */
    override fun close() = raw.close()

    override fun toString(): String = "Machnet(socketPath=$socketPath, localIp=$localIp, engines=$engines)"
}
