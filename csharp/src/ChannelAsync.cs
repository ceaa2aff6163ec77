using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;

namespace Machnet
{
    // The asynchronous half of Channel (no unsafe context: C# forbids await in one).
    public sealed partial class Channel
    {
        private readonly object asyncGate = new object();
        /// <summary>The channel fd as the process's poller knows it; null until the first ReceiveAsync waits.</summary>
        private PollTarget pollTarget;
        /// <summary>The thread that runs SendAsync calls; null until the first one.</summary>
        private SerialWorker sendWorker;
        private bool asyncReleased;

        /// <summary>
        /// Waits for the next message without holding a thread: a message already waiting
        /// completes the task at once; otherwise the channel's descriptor
        /// (<c>machnet_channel_fd</c>) is handed to the process's one poller thread, and the task
        /// continues on the thread pool once a message may be there. Cancelling
        /// <paramref name="cancellationToken"/> cancels the task; nothing is consumed then.
        /// </summary>
        /// <param name="cancellationToken">Cancels the wait.</param>
        /// <returns>A task that completes with the message, is cancelled, or faults with a
        /// <see cref="MachnetException"/> (e.g. <see cref="SidecarGoneException"/>, noticed within
        /// about a second) / <see cref="ObjectDisposedException"/>.</returns>
        public async Task<Message> ReceiveAsync(CancellationToken cancellationToken = default(CancellationToken))
        {
            cancellationToken.ThrowIfCancellationRequested();
            PollTarget target = Volatile.Read(ref pollTarget);
            while (true)
            {
                Message m;
                if (ReceiveCore(0, CancellationToken.None, out m))
                    return m;
                if (target == null)
                {
                    // Only a machnet_recv made after machnet_channel_fd arms the descriptor.
                    target = GetPollTarget();
                    continue;
                }
                FdPoller poller = FdPoller.Instance;
                TaskCompletionSource<bool> woken = poller.Wait(target);
                if (!cancellationToken.CanBeCanceled)
                {
                    await woken.Task.ConfigureAwait(false);
                    continue;
                }
                CancellationToken ct = cancellationToken;
                using (ct.Register(() =>
                {
                    if (poller.Cancel(target, woken))
                        woken.TrySetCanceled(ct);
                }))
                {
                    await woken.Task.ConfigureAwait(false);
                }
            }
        }

        private PollTarget GetPollTarget()
        {
            lock (asyncGate)
            {
                if (asyncReleased)
                    throw new ObjectDisposedException(GetType().FullName);
                if (pollTarget == null)
                    Volatile.Write(ref pollTarget, new PollTarget(ChannelFd()));
                return pollTarget;
            }
        }

        /// <summary>
        /// Queues <paramref name="data"/> to be sent as one message on <paramref name="flow"/>; the
        /// task completes when libmachnet has copied it into the channel. See
        /// <see cref="SendAsync(Flow, byte[], int, int, CancellationToken)"/>.
        /// </summary>
        /// <param name="flow">The flow (either orientation).</param>
        /// <param name="data">1 byte to <see cref="Sidecar.MaxMessageLength"/> bytes; do not modify it before the task completes.</param>
        /// <param name="cancellationToken">Cancels the send if it has not started.</param>
        /// <returns>The send's task.</returns>
        /// <exception cref="ArgumentNullException"><paramref name="data"/> is null.</exception>
        /// <exception cref="ArgumentException"><paramref name="data"/> is empty.</exception>
        public Task SendAsync(Flow flow, byte[] data, CancellationToken cancellationToken = default(CancellationToken))
        {
            if (data == null)
                throw new ArgumentNullException("data");
            return SendAsync(flow, data, 0, data.Length, cancellationToken);
        }

        /// <summary>Like <see cref="SendAsync(Flow, byte[], int, int, CancellationToken)"/> for the bytes of <paramref name="segment"/>.</summary>
        /// <param name="flow">The flow (either orientation).</param>
        /// <param name="segment">The message (at least 1 byte); do not modify it before the task completes.</param>
        /// <param name="cancellationToken">Cancels the send if it has not started.</param>
        /// <returns>The send's task.</returns>
        /// <exception cref="ArgumentNullException">The segment has no array.</exception>
        /// <exception cref="ArgumentException">The segment is empty.</exception>
        public Task SendAsync(Flow flow, ArraySegment<byte> segment, CancellationToken cancellationToken = default(CancellationToken))
        {
            if (segment.Array == null)
                throw new ArgumentNullException("segment", "the segment has no array");
            return SendAsync(flow, segment.Array, segment.Offset, segment.Count, cancellationToken);
        }

        /// <summary>
        /// Queues <paramref name="count"/> bytes of <paramref name="data"/> from
        /// <paramref name="offset"/> to be sent as one message on <paramref name="flow"/>, in call
        /// order with the channel's other SendAsync calls. No thread-pool thread waits under
        /// back-pressure: the channel's own send thread (started on first use, ended by
        /// <see cref="Dispose"/>) makes the calls, because libmachnet has no non-blocking send to
        /// pair with the channel fd. The task completes when libmachnet has copied the message
        /// (it is delivered even if the channel is disposed afterwards), faults with the
        /// exceptions of <see cref="Send(Flow, byte[])"/>, or is cancelled if
        /// <paramref name="cancellationToken"/> fires before the send started.
        /// </summary>
        /// <param name="flow">The flow (either orientation).</param>
        /// <param name="data">The buffer; do not modify the range before the task completes.</param>
        /// <param name="offset">Where the message starts.</param>
        /// <param name="count">The message length (at least 1).</param>
        /// <param name="cancellationToken">Cancels the send if it has not started.</param>
        /// <returns>The send's task.</returns>
        /// <exception cref="ArgumentNullException"><paramref name="data"/> is null.</exception>
        /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> or <paramref name="count"/> is negative.</exception>
        /// <exception cref="ArgumentException">The range is outside <paramref name="data"/>, or empty.</exception>
        public Task SendAsync(Flow flow, byte[] data, int offset, int count, CancellationToken cancellationToken = default(CancellationToken))
        {
            CheckRange(data, offset, count);
            if (count == 0)
                throw new MachnetArgumentException("machnet_send", "a message has at least 1 byte", "count");
            if (cancellationToken.IsCancellationRequested)
                return Task.FromCanceled(cancellationToken);
            var done = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            SerialWorker worker;
            try
            {
                worker = GetSendWorker();
            }
            catch (Exception e)
            {
                return Task.FromException(e);
            }
            bool queued = worker.Post(() =>
            {
                if (cancellationToken.IsCancellationRequested)
                {
                    done.TrySetCanceled(cancellationToken);
                    return;
                }
                try
                {
                    SendCore(flow, data, offset, count, "count");
                    done.TrySetResult(true);
                }
                catch (Exception e)
                {
                    done.TrySetException(e);
                }
            });
            if (!queued)
                return Task.FromException(new ObjectDisposedException(GetType().FullName));
            return done.Task;
        }

        private SerialWorker GetSendWorker()
        {
            lock (asyncGate)
            {
                if (asyncReleased || IsDisposed)
                    throw new ObjectDisposedException(GetType().FullName);
                return sendWorker ?? (sendWorker = new SerialWorker("machnet-send"));
            }
        }

        /// <summary>
        /// Opens a flow like <see cref="Connect(string, string, ushort, TimeSpan)"/> from any local
        /// address, waiting at most libmachnet's default of 10 s.
        /// </summary>
        /// <param name="remoteIp">The peer sidecar's IPv4 address.</param>
        /// <param name="port">The peer's Machnet port.</param>
        /// <param name="cancellationToken">Cancels the task (a flow established later is closed).</param>
        /// <returns>A task with the flow (Source = this sidecar).</returns>
        /// <exception cref="ArgumentException">The address is null or not a dotted-quad IPv4 address.</exception>
        public Task<Flow> ConnectAsync(string remoteIp, ushort port, CancellationToken cancellationToken = default(CancellationToken))
        {
            return ConnectAsync("0.0.0.0", remoteIp, port, Timeout.InfiniteTimeSpan, cancellationToken);
        }

        /// <summary>
        /// Opens a flow without blocking the caller. libmachnet's connect blocks until the peer
        /// answers (one round trip, or <paramref name="timeout"/>) and has no non-blocking form,
        /// so it runs on a short-lived dedicated thread, never on the thread pool. Cancelling
        /// <paramref name="cancellationToken"/> cancels the task at once; if the flow gets
        /// established anyway it is closed.
        /// </summary>
        /// <param name="localIp">This sidecar's IPv4 address, or "0.0.0.0".</param>
        /// <param name="remoteIp">The peer sidecar's IPv4 address.</param>
        /// <param name="port">The peer's Machnet port.</param>
        /// <param name="timeout">How long to wait (<see cref="Timeout.InfiniteTimeSpan"/>: 10 s).</param>
        /// <param name="cancellationToken">Cancels the task.</param>
        /// <returns>A task with the flow, or faulted with <see cref="ConnectionRefusedException"/>,
        /// <see cref="MachnetTimeoutException"/>, ...</returns>
        /// <exception cref="ArgumentNullException">An address is null.</exception>
        /// <exception cref="ArgumentException">An address is not a dotted-quad IPv4 address.</exception>
        /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative (and not infinite).</exception>
        public Task<Flow> ConnectAsync(string localIp, string remoteIp, ushort port, TimeSpan timeout,
            CancellationToken cancellationToken = default(CancellationToken))
        {
            CheckIp(localIp, "localIp");
            CheckIp(remoteIp, "remoteIp");
            Interop.TimeoutMs(timeout, "timeout");
            if (cancellationToken.IsCancellationRequested)
                return Task.FromCanceled<Flow>(cancellationToken);
            if (IsDisposed)
                return Task.FromException<Flow>(new ObjectDisposedException(GetType().FullName));
            var done = new TaskCompletionSource<Flow>(TaskCreationOptions.RunContinuationsAsynchronously);
            CancellationToken ct = cancellationToken;
            CancellationTokenRegistration reg = ct.Register(() => done.TrySetCanceled(ct));
            var t = new Thread(() =>
            {
                try
                {
                    Flow f = Connect(localIp, remoteIp, port, timeout);
                    if (!done.TrySetResult(f))
                    {
                        try { CloseFlow(f); } catch (Exception) { } // cancelled meanwhile: nobody will use it
                    }
                }
                catch (Exception e)
                {
                    done.TrySetException(e);
                }
                finally
                {
                    reg.Dispose();
                }
            }) { IsBackground = true, Name = "machnet-connect" };
            t.Start();
            return done.Task;
        }

        /// <summary>Before detaching: stop polling the channel fd (it closes) and end the send thread.</summary>
        private void ReleaseAsyncResources()
        {
            PollTarget target;
            SerialWorker worker;
            lock (asyncGate)
            {
                asyncReleased = true;
                target = pollTarget;
                worker = sendWorker;
            }
            if (target != null)
                FdPoller.Instance.Forget(target);
            if (worker != null)
                worker.Stop();
        }
    }

    /// <summary>
    /// A dedicated background thread that runs posted actions one at a time, in order. It exists
    /// for libmachnet calls that may block and have no non-blocking form, so that they never
    /// hold a thread-pool thread.
    /// </summary>
    internal sealed class SerialWorker
    {
        private readonly Queue<Action> work = new Queue<Action>();
        private bool stopped;

        internal SerialWorker(string name)
        {
            new Thread(Run) { IsBackground = true, Name = name }.Start();
        }

        /// <summary>Queues <paramref name="action"/>; false once <see cref="Stop"/> was called.</summary>
        internal bool Post(Action action)
        {
            lock (work)
            {
                if (stopped)
                    return false;
                work.Enqueue(action);
                if (work.Count == 1)
                    Monitor.Pulse(work);
            }
            return true;
        }

        /// <summary>Refuses new work; the thread ends after running what is queued.</summary>
        internal void Stop()
        {
            lock (work)
            {
                stopped = true;
                Monitor.Pulse(work);
            }
        }

        private void Run()
        {
            while (true)
            {
                Action next;
                lock (work)
                {
                    while (work.Count == 0)
                    {
                        if (stopped)
                            return;
                        Monitor.Wait(work);
                    }
                    next = work.Dequeue();
                }
                next();
            }
        }
    }
}
