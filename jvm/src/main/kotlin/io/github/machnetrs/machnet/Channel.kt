package io.github.machnetrs.machnet

import io.github.machnetrs.machnet.ffi.Channel as RawChannel
import io.github.machnetrs.machnet.ffi.FlowEventKind as RawKind
import java.nio.ByteBuffer
import java.time.Duration
import java.util.concurrent.CompletableFuture
import java.util.concurrent.Executor
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.ThreadFactory
import java.util.concurrent.atomic.AtomicInteger

/**
 * A shared-memory channel to one sidecar engine. Any number of threads may use it at once
 * (it is the Rust client's `SharedChannel`): blocking calls never stop other threads from
 * sending or receiving, and [close] wakes every call sleeping on it (they throw
 * [ChannelClosedException]).
 *
 * Blocking calls: [connect], [send] (waits while the sidecar applies back-pressure), [recv],
 * [nextEvent]. Each has a `CompletableFuture` variant (`…Async`) that runs it on [executor]
 * (by default a shared pool of daemon threads).
 *
 * Closing is graceful: the sidecar delivers what was sent, then closes the flows; [abort]
 * resets them instead.
 */
class Channel internal constructor(private val raw: RawChannel) : AutoCloseable {
    /** Runs the `…Async` calls (default: a shared cached pool of daemon threads). */
    @Volatile
    var executor: Executor = defaultExecutor

    /** The sidecar's id of this channel. */
    val id: Long get() = raw.id().toLong()

    /** The engine serving this channel. */
    val engine: Int get() = raw.engine().toInt()

    /** Largest message this channel carries, in bytes. */
    val maxMessageLength: Int get() = raw.maxMessageLen().toInt()

    /** Whether [close] or [abort] was called. */
    val isClosed: Boolean get() = raw.isClosed()

    // ----- flows -----

    /** Accepts flows to [port] (1..65535) of the sidecar's address on this channel. */
    fun listen(port: Int) = call { raw.listen(port(port)) }

    /** Stops accepting flows to [port]. */
    fun unlisten(port: Int) = call { raw.unlisten(port(port)) }

    /** Opens a flow to [ip]:[port], waiting up to 30 s for the peer to answer. */
    fun connect(ip: String, port: Int): Flow = flow(call { raw.connect(ip, port(port), null) })

    /** Opens a flow to [ip]:[port], waiting up to [timeout] for the peer to answer. */
    fun connect(ip: String, port: Int, timeout: Duration): Flow =
        flow(call { raw.connect(ip, port(port), millis(timeout) ?: ULong.MAX_VALUE) })

    /** Closes [flow] gracefully (what was sent is delivered first). */
    fun closeFlow(flow: Flow) = call { raw.closeFlow(flow.raw) }

    /** Aborts [flow]: the peer sees a reset. */
    fun abortFlow(flow: Flow) = call { raw.abortFlow(flow.raw) }

    /** Where [flow] stands: `"open"`, `"peer_closed"`, `"closing"` or `"closed"`. */
    fun flowStatus(flow: Flow): String = call { raw.flowStatus(flow.raw) }

    // ----- sending -----

    /** Sends [data] as one message on [flow] (1 byte .. [maxMessageLength]), waiting for ring
     *  space as long as needed. */
    fun send(flow: Flow, data: ByteArray) = send(flow, data, 0, data.size)

    /** Sends [length] bytes of [data] from [offset] as one message on [flow]. */
    fun send(flow: Flow, data: ByteArray, offset: Int, length: Int) {
        if (offset < 0 || length < 0 || offset > data.size - length) {
            throw Errors.invalid("offset $offset and length $length do not fit an array of ${data.size} bytes")
        }
        val buf = direct(data, offset, length)
        call { raw.send(flow.raw, buf) }
    }

    /** Sends the bytes of [data] between its position and limit as one message on [flow]
     *  (without a copy when [data] is a direct buffer). The position does not move. */
    fun send(flow: Flow, data: ByteBuffer) {
        if (data.isDirect) {
            call { raw.send(flow.raw, data) }
        } else {
            val d = data.duplicate()
            val bytes = ByteArray(d.remaining())
            d.get(bytes)
            send(flow, bytes)
        }
    }

    /** Sends [data] on [flow] only if the request ring has room now; returns whether it did. */
    fun trySend(flow: Flow, data: ByteArray): Boolean =
        call { raw.sendTimeout(flow.raw, direct(data, 0, data.size), 0uL) }

    /** Sends [data] on [flow], waiting up to [timeout] for ring space; returns whether it did. */
    fun trySend(flow: Flow, data: ByteArray, timeout: Duration): Boolean =
        call { raw.sendTimeout(flow.raw, direct(data, 0, data.size), millis(timeout) ?: ULong.MAX_VALUE) }

    // ----- receiving -----

    /** The next message, waiting as long as needed (until [close]: [ChannelClosedException]). */
    fun recv(): Message = message(call { raw.recv(null) })
        ?: throw Errors.of(ErrorKind.IO, "recv without timeout returned nothing")

    /** The next message, waiting up to [timeout]; [MachnetTimeoutException] if none came. */
    fun recv(timeout: Duration): Message = tryRecv(timeout)
        ?: throw Errors.of(ErrorKind.TIMED_OUT, "no message within $timeout", 110)

    /** The next message if one is waiting now, else null. */
    fun tryRecv(): Message? = message(call { raw.recv(0uL) })

    /** The next message, waiting up to [timeout]; null if none came. */
    fun tryRecv(timeout: Duration): Message? = message(call { raw.recv(millis(timeout)) })

    /** The next flow event (accepted, peer closed, reset, closed, ...), waiting up to
     *  [timeout]; null if none came. Events behind a message wait until a receive took it. */
    fun nextEvent(timeout: Duration): FlowEvent? = call { raw.nextEvent(millis(timeout)) }?.let {
        FlowEvent(kindOf(it.kind), Flow(it.flow, it.handle.toLong(), this), it.reason, it.port?.toInt(), it.request)
    }

    /** The next flow event, waiting as long as needed. */
    fun nextEvent(): FlowEvent = call { raw.nextEvent(null) }?.let {
        FlowEvent(kindOf(it.kind), Flow(it.flow, it.handle.toLong(), this), it.reason, it.port?.toInt(), it.request)
    } ?: throw Errors.of(ErrorKind.IO, "nextEvent without timeout returned nothing")

    // ----- CompletableFuture variants (run on [executor]) -----

    /** [connect] on [executor]. */
    fun connectAsync(ip: String, port: Int): CompletableFuture<Flow> = async { connect(ip, port) }

    /** [connect] with a timeout, on [executor]. */
    fun connectAsync(ip: String, port: Int, timeout: Duration): CompletableFuture<Flow> =
        async { connect(ip, port, timeout) }

    /** [send] on [executor] (the bytes are copied first: [data] may change once this returns). */
    fun sendAsync(flow: Flow, data: ByteArray): CompletableFuture<Void?> {
        val copy = data.copyOf()
        return async { send(flow, copy); null }
    }

    /** [recv] on [executor]: completes with the next message, or exceptionally with
     *  [ChannelClosedException] once the channel is closed. */
    fun recvAsync(): CompletableFuture<Message> = async { recv() }

    /** [recv] with a timeout on [executor]: completes exceptionally with
     *  [MachnetTimeoutException] if no message came in time. */
    fun recvAsync(timeout: Duration): CompletableFuture<Message> = async { recv(timeout) }

    /** [nextEvent] with a timeout on [executor] (completes with null if none came). */
    fun nextEventAsync(timeout: Duration): CompletableFuture<FlowEvent?> = async { nextEvent(timeout) }

    // ----- closing -----

    /** Makes every call sleeping on this channel right now throw [MachnetInterruptedException]. */
    fun interrupt() = raw.interrupt()

    /** Closes the channel gracefully: the sidecar delivers what was sent, then closes its
     *  flows. Calls sleeping on it throw [ChannelClosedException]. Closing twice does nothing. */
    override fun close() = call { raw.closeChannel() }

    /** Closes the channel and aborts its flows at once (their peers see a reset). */
    fun abort() = call { raw.abortChannel() }

    override fun toString(): String = "Channel(id=$id, engine=$engine${if (isClosed) ", closed" else ""})"

    private fun flow(raw: io.github.machnetrs.machnet.ffi.Flow): Flow = Flow(raw, raw.handle().toLong(), this)

    private fun message(m: io.github.machnetrs.machnet.ffi.Message?): Message? =
        m?.let { Message(Flow(it.flow, it.handle.toLong(), this), it.data) }

    private fun <T> async(block: () -> T): CompletableFuture<T> = CompletableFuture.supplyAsync({ block() }, executor)

    companion object {
        private val threads = AtomicInteger()

        /** The default [executor]: a cached pool of daemon threads `machnet-async-N`. */
        @JvmStatic
        val defaultExecutor: ExecutorService = Executors.newCachedThreadPool(ThreadFactory { r ->
            Thread(r, "machnet-async-${threads.incrementAndGet()}").apply { isDaemon = true }
        })

        /** Messages up to this size are copied through a per-thread direct buffer. */
        private const val SCRATCH_MAX = 1 shl 20
        private val scratch = ThreadLocal<ByteBuffer>()

        /** [data] in a direct buffer (position 0, limit [length]) that JNA can pass as a pointer. */
        private fun direct(data: ByteArray, offset: Int, length: Int): ByteBuffer {
            if (length > SCRATCH_MAX) {
                return ByteBuffer.allocateDirect(length).put(data, offset, length).flip()
            }
            var b = scratch.get()
            if (b == null || b.capacity() < length) {
                b = ByteBuffer.allocateDirect(maxOf(length, 4096).takeHighestOneBit().let { if (it < length) it shl 1 else it })
                scratch.set(b)
            }
            b.clear()
            b.put(data, offset, length).flip()
            return b
        }

        private fun port(port: Int): UShort {
            if (port !in 1..0xFFFF) throw Errors.invalid("port must be in 1..65535, got $port")
            return port.toUShort()
        }

        /** Milliseconds, rounded up (null: too long to matter, wait as long as needed). */
        private fun millis(timeout: Duration): ULong? {
            if (timeout.isNegative) throw Errors.invalid("timeout must not be negative, got $timeout")
            return try {
                val ms = timeout.toMillis()
                val extra = if (timeout.minusMillis(ms).isZero) 0 else 1
                (ms + extra).toULong()
            } catch (e: ArithmeticException) {
                null
            }
        }


        private fun kindOf(k: RawKind): FlowEventKind = when (k) {
            RawKind.ACCEPTED -> FlowEventKind.ACCEPTED
            RawKind.PEER_CLOSED -> FlowEventKind.PEER_CLOSED
            RawKind.RESET -> FlowEventKind.RESET
            RawKind.TIMED_OUT -> FlowEventKind.TIMED_OUT
            RawKind.REFUSED -> FlowEventKind.REFUSED
            RawKind.CLOSED -> FlowEventKind.CLOSED
            RawKind.REQUEST_FAILED -> FlowEventKind.REQUEST_FAILED
        }
    }
}
