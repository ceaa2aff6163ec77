using System;
using System.Diagnostics;
using System.Threading;
using System.Threading.Tasks;
using Machnet.Native;

namespace Machnet
{
    /// <summary>
    /// One shared-memory channel to the Machnet sidecar: listen, connect, send and receive
    /// messages (1 byte to <see cref="Sidecar.MaxMessageLength"/>) on flows.
    /// </summary>
    /// <remarks>
    /// Methods may be called from several threads at once (libmachnet serialises them per channel
    /// and does not hold its lock while a call waits); one channel per busy thread is fastest.
    /// Dispose the channel when done: calls still blocked on it throw
    /// <see cref="ObjectDisposedException"/>, and the sidecar closes its flows gracefully (every
    /// message whose <see cref="Send(Flow, byte[])"/> returned is still delivered, then the
    /// peers see the flows end; docs/CHANNEL.md §5), as it does when the process exits. A
    /// channel that is never disposed is detached by its finalizer (gracefully too).
    /// <see cref="Abort"/> aborts the flows instead.
    /// </remarks>
    public sealed unsafe partial class Channel : IDisposable
    {
        /// <summary>Receive buffer for small messages, per thread (larger ones get an exact array).</summary>
        [ThreadStatic] private static byte[] scratch;
        private const int ScratchSize = 64 * 1024;

        /// <summary>How often a cancelled <see cref="ReceiveAsync"/> interrupts its wait until it returns.</summary>
        private const int InterruptPeriodMs = 5;

        /// <summary>libmachnet's handle: never dereferenced; the library rejects stale handles (EBADF).</summary>
        private readonly IntPtr ctx;
        private int disposed;

        /// <summary>
        /// Opens a channel to the sidecar this process attached to with <see cref="Sidecar.Init(string)"/>.
        /// </summary>
        /// <exception cref="NotInitializedException"><see cref="Sidecar.Init(string)"/> was not called.</exception>
        /// <exception cref="MachnetException">The sidecar refused or is gone.</exception>
        public Channel()
        {
            void* p = NativeMethods.machnet_attach();
            if (p == null)
                throw MachnetException.FromErrno("machnet_attach", Interop.LastErrno());
            ctx = (IntPtr)p;
        }

        /// <summary>Safety net: detaches a channel that was not disposed.</summary>
        ~Channel()
        {
            if (Interlocked.Exchange(ref disposed, 1) == 0)
            {
                ReleaseAsyncResources();
                NativeMethods.machnet_detach((void*)ctx);
            }
        }

        /// <summary>
        /// Closes the channel gracefully: the sidecar still delivers every message whose send
        /// returned, then closes the channel's flows (the peers see them end after their last
        /// message). Calls blocked on the channel and every later call throw
        /// <see cref="ObjectDisposedException"/>. Calling it again does nothing.
        /// </summary>
        public void Dispose()
        {
            if (Interlocked.Exchange(ref disposed, 1) == 0)
            {
                ReleaseAsyncResources();
                NativeMethods.machnet_detach((void*)ctx);
                GC.SuppressFinalize(this);
            }
        }

        /// <summary>
        /// Closes the channel and aborts its flows at once: messages not yet delivered are
        /// discarded and the peers see their flows reset. Otherwise like <see cref="Dispose"/>
        /// (afterwards the channel is disposed); calling it on a disposed channel does nothing.
        /// </summary>
        public void Abort()
        {
            if (Interlocked.Exchange(ref disposed, 1) == 0)
            {
                ReleaseAsyncResources();
                NativeMethods.machnet_detach_abort((void*)ctx);
                GC.SuppressFinalize(this);
            }
        }

        /// <summary>Whether <see cref="Dispose"/> was called.</summary>
        public bool IsDisposed
        {
            get { return Volatile.Read(ref disposed) != 0; }
        }

        private void* Handle
        {
            get
            {
                if (Volatile.Read(ref disposed) != 0)
                    throw new ObjectDisposedException(GetType().FullName);
                return (void*)ctx;
            }
        }

        /// <summary>The exception for a failed call; EBADF after Dispose means "disposed".</summary>
        private Exception Fail(string op, int errno)
        {
            if (errno == LinuxErrno.EBADF && IsDisposed)
                return new ObjectDisposedException(GetType().FullName);
            return MachnetException.FromErrno(op, errno);
        }

        private static void CheckIp(string ip, string paramName)
        {
            if (ip == null)
                throw new ArgumentNullException(paramName);
            string[] parts = ip.Split('.');
            bool ok = parts.Length == 4;
            for (int i = 0; ok && i < 4; i++)
            {
                int v;
                ok = parts[i].Length >= 1 && parts[i].Length <= 3 && int.TryParse(parts[i], System.Globalization.NumberStyles.None,
                    System.Globalization.CultureInfo.InvariantCulture, out v) && v <= 255;
            }
            if (!ok)
                throw new ArgumentException("not a dotted-quad IPv4 address: \"" + ip + "\"", paramName);
        }

        /// <summary>Accepts flows to Machnet port <paramref name="port"/> on any of the sidecar's addresses.</summary>
        /// <param name="port">The Machnet port.</param>
        /// <exception cref="PortInUseException">Another channel listens on the port.</exception>
        public void Listen(ushort port) { Listen("0.0.0.0", port); }

        /// <summary>Accepts flows to Machnet port <paramref name="port"/> at <paramref name="localIp"/>.</summary>
        /// <param name="localIp">The sidecar's IPv4 address, or "0.0.0.0".</param>
        /// <param name="port">The Machnet port.</param>
        /// <exception cref="ArgumentNullException"><paramref name="localIp"/> is null.</exception>
        /// <exception cref="ArgumentException"><paramref name="localIp"/> is not a dotted-quad IPv4 address.</exception>
        /// <exception cref="PortInUseException">Another channel listens on the port.</exception>
        /// <exception cref="MachnetException">Another failure (e.g. EADDRNOTAVAIL: not the sidecar's address).</exception>
        public void Listen(string localIp, ushort port)
        {
            CheckIp(localIp, "localIp");
            fixed (byte* ip = Interop.Utf8z(localIp))
            {
                if (NativeMethods.machnet_listen(Handle, ip, port) != 0)
                    throw Fail("machnet_listen", Interop.LastErrno());
            }
            GC.KeepAlive(this);
        }

        /// <summary>Opens a flow to <paramref name="remoteIp"/>:<paramref name="port"/> (waiting at most 10 s).</summary>
        /// <param name="remoteIp">The peer sidecar's IPv4 address.</param>
        /// <param name="port">The peer's Machnet port.</param>
        /// <returns>The flow, Source = this sidecar.</returns>
        /// <exception cref="ArgumentException">An address is null or not a dotted-quad IPv4 address.</exception>
        /// <exception cref="ConnectionRefusedException">Nothing listens there.</exception>
        /// <exception cref="MachnetTimeoutException">The peer did not answer in time.</exception>
        public Flow Connect(string remoteIp, ushort port)
        {
            return Connect("0.0.0.0", remoteIp, port, Timeout.InfiniteTimeSpan);
        }

        /// <summary>Opens a flow from <paramref name="localIp"/> to <paramref name="remoteIp"/>:<paramref name="port"/> (waiting at most 10 s).</summary>
        /// <param name="localIp">This sidecar's IPv4 address, or "0.0.0.0".</param>
        /// <param name="remoteIp">The peer sidecar's IPv4 address.</param>
        /// <param name="port">The peer's Machnet port.</param>
        /// <returns>The flow, Source = this sidecar.</returns>
        /// <exception cref="ArgumentException">An address is null or not a dotted-quad IPv4 address.</exception>
        /// <exception cref="ConnectionRefusedException">Nothing listens there.</exception>
        /// <exception cref="MachnetTimeoutException">The peer did not answer in time.</exception>
        public Flow Connect(string localIp, string remoteIp, ushort port)
        {
            return Connect(localIp, remoteIp, port, Timeout.InfiniteTimeSpan);
        }

        /// <summary>
        /// Opens a flow, waiting at most <paramref name="timeout"/> for the peer's answer
        /// (<see cref="Timeout.InfiniteTimeSpan"/>: libmachnet's default of 10 s).
        /// </summary>
        /// <param name="localIp">This sidecar's IPv4 address, or "0.0.0.0".</param>
        /// <param name="remoteIp">The peer sidecar's IPv4 address.</param>
        /// <param name="port">The peer's Machnet port.</param>
        /// <param name="timeout">How long to wait.</param>
        /// <returns>The flow, Source = this sidecar.</returns>
        /// <exception cref="ArgumentNullException">An address is null.</exception>
        /// <exception cref="ArgumentException">An address is not a dotted-quad IPv4 address.</exception>
        /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative (and not infinite).</exception>
        /// <exception cref="ConnectionRefusedException">Nothing listens there.</exception>
        /// <exception cref="MachnetTimeoutException">The peer did not answer in time.</exception>
        public Flow Connect(string localIp, string remoteIp, ushort port, TimeSpan timeout)
        {
            CheckIp(localIp, "localIp");
            CheckIp(remoteIp, "remoteIp");
            int ms = Interop.TimeoutMs(timeout, "timeout");
            MachnetFlow f;
            fixed (byte* l = Interop.Utf8z(localIp))
            fixed (byte* r = Interop.Utf8z(remoteIp))
            {
                if (NativeMethods.machnet_connect_timeout(Handle, l, r, port, &f, ms) != 0)
                    throw Fail("machnet_connect", Interop.LastErrno());
            }
            GC.KeepAlive(this);
            return new Flow(f);
        }

        /// <summary>
        /// Closes <paramref name="flow"/> gracefully: messages already sent are delivered, then the
        /// peer sees the flow end. Sends on it fail afterwards.
        /// </summary>
        /// <param name="flow">The flow (either orientation).</param>
        /// <exception cref="FlowClosedException">The flow is not open on this channel.</exception>
        public void CloseFlow(Flow flow)
        {
            if (NativeMethods.machnet_close(Handle, flow.ToNative()) != 0)
                throw Fail("machnet_close", Interop.LastErrno());
            GC.KeepAlive(this);
        }

        /// <summary>
        /// Sends <paramref name="data"/> as one message on <paramref name="flow"/>, waiting while the
        /// sidecar applies back-pressure. The bytes are copied before it returns.
        /// </summary>
        /// <param name="flow">The flow (either orientation).</param>
        /// <param name="data">1 byte to <see cref="Sidecar.MaxMessageLength"/> bytes.</param>
        /// <exception cref="ArgumentNullException"><paramref name="data"/> is null.</exception>
        /// <exception cref="ArgumentException"><paramref name="data"/> is empty.</exception>
        /// <exception cref="MessageSizeException">Longer than <see cref="Sidecar.MaxMessageLength"/>.</exception>
        /// <exception cref="FlowClosedException">The flow is not open.</exception>
        public void Send(Flow flow, byte[] data)
        {
            if (data == null)
                throw new ArgumentNullException("data");
            SendCore(flow, data, 0, data.Length, "data");
        }

        /// <summary>Checks a send's buffer range (the same rules for every send form).</summary>
        internal static void CheckRange(byte[] data, int offset, int count)
        {
            if (data == null)
                throw new ArgumentNullException("data");
            if (offset < 0)
                throw new ArgumentOutOfRangeException("offset", "must be non-negative");
            if (count < 0)
                throw new ArgumentOutOfRangeException("count", "must be non-negative");
            if (data.Length - offset < count)
                throw new ArgumentException("offset + count is past the end of the array");
        }

        /// <summary>Sends <paramref name="count"/> bytes of <paramref name="data"/> from <paramref name="offset"/> as one message.</summary>
        /// <param name="flow">The flow (either orientation).</param>
        /// <param name="data">The buffer.</param>
        /// <param name="offset">Where the message starts in <paramref name="data"/>.</param>
        /// <param name="count">The message length (at least 1).</param>
        /// <exception cref="ArgumentNullException"><paramref name="data"/> is null.</exception>
        /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="count"/> is negative.</exception>
        /// <exception cref="ArgumentException">The range is outside <paramref name="data"/>, or empty.</exception>
        /// <exception cref="MessageSizeException">Longer than <see cref="Sidecar.MaxMessageLength"/>.</exception>
        /// <exception cref="FlowClosedException">The flow is not open.</exception>
        public void Send(Flow flow, byte[] data, int offset, int count)
        {
            CheckRange(data, offset, count);
            SendCore(flow, data, offset, count, "count");
        }

        /// <summary>Sends the bytes of <paramref name="segment"/> as one message.</summary>
        /// <param name="flow">The flow (either orientation).</param>
        /// <param name="segment">The message (at least 1 byte).</param>
        /// <exception cref="ArgumentNullException">The segment has no array (a default ArraySegment).</exception>
        /// <exception cref="ArgumentException">The segment is empty.</exception>
        /// <exception cref="MessageSizeException">Longer than <see cref="Sidecar.MaxMessageLength"/>.</exception>
        /// <exception cref="FlowClosedException">The flow is not open.</exception>
        public void Send(Flow flow, ArraySegment<byte> segment)
        {
            if (segment.Array == null)
                throw new ArgumentNullException("segment", "the segment has no array");
            SendCore(flow, segment.Array, segment.Offset, segment.Count, "segment");
        }

        private void SendCore(Flow flow, byte[] data, int offset, int count, string paramName)
        {
            if (count == 0)
                throw new MachnetArgumentException("machnet_send", "a message has at least 1 byte", paramName);
            MachnetFlow f = flow.ToNative();
            fixed (byte* p = &data[offset])
            {
                while (NativeMethods.machnet_send(Handle, f, p, (UIntPtr)count) != 0)
                {
                    int errno = Interop.LastErrno();
                    if (errno != LinuxErrno.EINTR) // woken by an Interrupt meant for a receiver: retry
                        throw Fail("machnet_send", errno);
                }
            }
            GC.KeepAlive(this);
        }

        /// <summary>The size of the next waiting message without consuming it; 0 if none is waiting.</summary>
        /// <returns>The size in bytes, or 0.</returns>
        public int Peek()
        {
            long n = (long)NativeMethods.machnet_peek(Handle);
            if (n < 0)
                throw Fail("machnet_peek", Interop.LastErrno());
            GC.KeepAlive(this);
            return (int)n;
        }

        /// <summary>Waits without limit for the next message.</summary>
        /// <returns>The message.</returns>
        /// <exception cref="ObjectDisposedException">The channel is or gets disposed.</exception>
        public Message Receive()
        {
            Message m;
            ReceiveCore(-1, CancellationToken.None, out m);
            return m;
        }

        /// <summary>Waits up to <paramref name="timeout"/> for the next message.</summary>
        /// <param name="timeout">How long to wait (<see cref="TimeSpan.Zero"/>: only take a waiting one;
        /// <see cref="Timeout.InfiniteTimeSpan"/>: without limit).</param>
        /// <returns>The message.</returns>
        /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative (and not infinite).</exception>
        /// <exception cref="MachnetTimeoutException">No message came in time.</exception>
        /// <exception cref="ObjectDisposedException">The channel is or gets disposed.</exception>
        public Message Receive(TimeSpan timeout)
        {
            Message m;
            if (!ReceiveCore(Interop.TimeoutMs(timeout, "timeout"), CancellationToken.None, out m))
                throw new MachnetTimeoutException("machnet_recv_timeout", LinuxErrno.ETIMEDOUT, "no message within " + timeout);
            return m;
        }

        /// <summary>Waits up to <paramref name="timeout"/> for the next message; false if none came.</summary>
        /// <param name="timeout">How long to wait (<see cref="TimeSpan.Zero"/>: only take a waiting one).</param>
        /// <param name="message">The message, or null.</param>
        /// <returns>Whether a message was received.</returns>
        /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative (and not infinite).</exception>
        public bool TryReceive(TimeSpan timeout, out Message message)
        {
            return ReceiveCore(Interop.TimeoutMs(timeout, "timeout"), CancellationToken.None, out message);
        }

        /// <summary>
        /// Waits up to <paramref name="timeout"/> for the next message and copies it into
        /// <paramref name="buffer"/> (no allocation). A message larger than the buffer is not consumed:
        /// <see cref="MessageSizeException"/> tells its size.
        /// </summary>
        /// <param name="buffer">Where to copy the message.</param>
        /// <param name="timeout">How long to wait.</param>
        /// <param name="length">The message's length, or 0.</param>
        /// <param name="flow">Its flow (Source = the peer).</param>
        /// <returns>Whether a message was received.</returns>
        /// <exception cref="ArgumentNullException">The segment has no array.</exception>
        /// <exception cref="ArgumentException">The segment is empty.</exception>
        /// <exception cref="MessageSizeException">The waiting message is larger than the buffer.</exception>
        public bool TryReceive(ArraySegment<byte> buffer, TimeSpan timeout, out int length, out Flow flow)
        {
            if (buffer.Array == null)
                throw new ArgumentNullException("buffer", "the segment has no array");
            if (buffer.Count == 0)
                throw new ArgumentException("the buffer is empty", "buffer");
            int ms = Interop.TimeoutMs(timeout, "timeout");
            RaiseFlowEvents();
            MachnetFlow f;
            long n;
            fixed (byte* p = &buffer.Array[buffer.Offset])
            {
                n = RecvInto(p, buffer.Count, ms, CancellationToken.None, out f);
            }
            if (n < 0)
                throw new MessageSizeException("machnet_recv", LinuxErrno.EMSGSIZE,
                    "machnet_recv: the waiting message (" + (-n) + " bytes) does not fit the buffer (" + buffer.Count + " bytes)", -n)
                { CodeName = ErrorCodes.BufferTooSmall };
            length = (int)n;
            flow = new Flow(f);
            return n > 0;
        }

        /// <summary>
        /// Raised for each flow event (a peer closed or reset a flow, it timed out, ...) on the
        /// thread of a receive call, before that call takes a message and before it waits or
        /// reports a timeout. A pending <see cref="ReceiveAsync"/> wakes for events, so they are
        /// raised promptly; a thread blocked in <see cref="Receive()"/> raises the events that came
        /// meanwhile when its call returns. Several receiving threads may raise events at once.
        /// An exception thrown by a handler propagates out of the receive call (no message is
        /// lost: none was taken yet). Without a handler, events stay queued in libmachnet (up to
        /// 1024, then counted in <see cref="FlowEventsDropped"/>) for <see cref="TryGetFlowEvent"/>.
        /// </summary>
        public event EventHandler<FlowEventArgs> FlowEvent;

        /// <summary>
        /// Takes the next flow event without waiting (the pull form of <see cref="FlowEvent"/>,
        /// which takes them itself while it has handlers).
        /// </summary>
        /// <param name="flowEvent">The event, or null.</param>
        /// <returns>Whether an event was waiting.</returns>
        public bool TryGetFlowEvent(out FlowEventArgs flowEvent)
        {
            MachnetFlowEvent ev;
            int r = NativeMethods.machnet_next_event(Handle, &ev);
            if (r < 0)
                throw Fail("machnet_next_event", Interop.LastErrno());
            GC.KeepAlive(this);
            flowEvent = r == 0 ? null : new FlowEventArgs(new Flow(ev.flow), (FlowEventKind)ev.kind, ev.err);
            return r != 0;
        }

        /// <summary>How many flow events libmachnet did not keep because nobody took them (its
        /// queue holds 1024 per channel).</summary>
        public long FlowEventsDropped
        {
            get
            {
                long n = NativeMethods.machnet_events_dropped(Handle);
                if (n < 0)
                    throw Fail("machnet_events_dropped", Interop.LastErrno());
                GC.KeepAlive(this);
                return n;
            }
        }

        /// <summary>Hands the queued flow events to the <see cref="FlowEvent"/> handlers, if any.</summary>
        private void RaiseFlowEvents()
        {
            EventHandler<FlowEventArgs> handlers = Volatile.Read(ref FlowEvent);
            if (handlers == null)
                return;
            FlowEventArgs ev;
            while (TryGetFlowEvent(out ev))
                handlers(this, ev);
        }

        /// <summary>Receives one message into an exact-size array; false if <paramref name="timeoutMs"/> passed.</summary>
        private bool ReceiveCore(int timeoutMs, CancellationToken ct, out Message message)
        {
            RaiseFlowEvents();
            byte[] buf = scratch ?? (scratch = new byte[ScratchSize]);
            long deadline = timeoutMs < 0 ? long.MaxValue : Stopwatch.GetTimestamp() + timeoutMs * Stopwatch.Frequency / 1000;
            while (true)
            {
                MachnetFlow f;
                long n;
                fixed (byte* p = buf)
                {
                    n = RecvInto(p, buf.Length, RemainingMs(timeoutMs, deadline), ct, out f);
                }
                if (n > 0)
                {
                    var data = new byte[n];
                    Buffer.BlockCopy(buf, 0, data, 0, (int)n);
                    message = new Message(new Flow(f), data);
                    return true;
                }
                if (n == 0)
                {
                    RaiseFlowEvents();
                    message = null;
                    return false;
                }
                // Larger than the scratch buffer: take it into an exact array (still queued).
                var big = new byte[-n];
                fixed (byte* p = big)
                {
                    n = RecvInto(p, big.Length, 0, CancellationToken.None, out f);
                }
                if (n == big.Length)
                {
                    message = new Message(new Flow(f), big);
                    return true;
                }
                if (n > 0) // another thread took it and a smaller one is next
                {
                    var data = new byte[n];
                    Buffer.BlockCopy(big, 0, data, 0, (int)n);
                    message = new Message(new Flow(f), data);
                    return true;
                }
                // Gone (another receiver) or bigger still: wait again.
            }
        }

        private static int RemainingMs(int timeoutMs, long deadline)
        {
            if (timeoutMs <= 0)
                return timeoutMs;
            long left = (deadline - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency;
            return left <= 0 ? 0 : (int)Math.Min(left + 1, int.MaxValue);
        }

        /// <summary>
        /// One receive into <paramref name="buf"/>: the length (> 0), 0 if <paramref name="timeoutMs"/>
        /// passed, or -(size) if the waiting message does not fit (it stays queued). Retries after
        /// interrupts not meant for it; throws OperationCanceledException once <paramref name="ct"/> is cancelled.
        /// </summary>
        private long RecvInto(byte* buf, int len, int timeoutMs, CancellationToken ct, out MachnetFlow flow)
        {
            long deadline = timeoutMs < 0 ? long.MaxValue : Stopwatch.GetTimestamp() + timeoutMs * Stopwatch.Frequency / 1000;
            CancellationTokenRegistration reg = default(CancellationTokenRegistration);
            Timer waker = null;
            var done = new StrongBox<bool>();
            if (ct.CanBeCanceled && timeoutMs != 0)
            {
                // machnet_interrupt wakes only calls already blocked: repeat it until this call is back.
                reg = ct.Register(() =>
                {
                    lock (done)
                    {
                        if (!done.Value)
                            waker = new Timer(_ => Interrupt(), null, 0, InterruptPeriodMs);
                    }
                });
            }
            try
            {
                MachnetFlow f;
                while (true)
                {
                    ct.ThrowIfCancellationRequested();
                    int ms = RemainingMs(timeoutMs, deadline);
                    long n = timeoutMs == 0
                        ? (long)NativeMethods.machnet_recv(Handle, buf, (UIntPtr)len, &f)
                        : (long)NativeMethods.machnet_recv_timeout(Handle, buf, (UIntPtr)len, &f, ms);
                    if (n > 0)
                    {
                        flow = f;
                        return n;
                    }
                    if (n == 0)
                    {
                        if (timeoutMs >= 0 && (ms == 0 || Stopwatch.GetTimestamp() >= deadline))
                        {
                            flow = f;
                            return 0;
                        }
                        continue;
                    }
                    int errno = Interop.LastErrno();
                    if (errno == LinuxErrno.EINTR)
                        continue;
                    if (errno == LinuxErrno.EMSGSIZE)
                    {
                        long needed = (long)NativeMethods.machnet_peek(Handle);
                        if (needed > len)
                        {
                            flow = f;
                            return -needed;
                        }
                        continue; // taken by another receiver meanwhile
                    }
                    throw Fail("machnet_recv", errno);
                }
            }
            finally
            {
                reg.Dispose();
                lock (done)
                {
                    done.Value = true;
                    if (waker != null)
                        waker.Dispose();
                }
                GC.KeepAlive(this);
            }
        }

        /// <summary>The channel's pollable descriptor (<c>machnet_channel_fd</c>; from now on an empty
        /// <c>machnet_recv</c> arms it).</summary>
        private int ChannelFd()
        {
            int fd = NativeMethods.machnet_channel_fd(Handle);
            if (fd < 0)
                throw Fail("machnet_channel_fd", Interop.LastErrno());
            GC.KeepAlive(this);
            return fd;
        }

        /// <summary>Wakes every call blocked on this channel right now (they retry or see cancellation).</summary>
        private void Interrupt()
        {
            if (!IsDisposed)
                NativeMethods.machnet_interrupt((void*)ctx);
        }

        private sealed class StrongBox<T>
        {
            public T Value;
        }
    }
}
