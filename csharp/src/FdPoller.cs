using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Threading;
using System.Threading.Tasks;

namespace Machnet
{
    /// <summary>The few libc calls the poller needs (mono maps "libc" to libc.so.6; so does .NET).</summary>
    internal static unsafe class LibC
    {
        [StructLayout(LayoutKind.Sequential)]
        internal struct PollFd
        {
            public int fd;
            public short events;
            public short revents;
        }

        internal const short POLLIN = 0x001;
        internal const int EFD_NONBLOCK = 0x800;
        internal const int EFD_CLOEXEC = 0x80000;

        [DllImport("libc", SetLastError = true)]
        internal static extern int poll(PollFd* fds, UIntPtr nfds, int timeout);

        [DllImport("libc", SetLastError = true)]
        internal static extern int eventfd(uint initval, int flags);

        [DllImport("libc", SetLastError = true)]
        internal static extern IntPtr read(int fd, void* buf, UIntPtr count);

        [DllImport("libc", SetLastError = true)]
        internal static extern IntPtr write(int fd, void* buf, UIntPtr count);
    }

    /// <summary>
    /// One channel's descriptor as the poller knows it (<c>machnet_channel_fd</c>): waiters
    /// register on it after a <c>machnet_recv</c> that found nothing (which armed the fd).
    /// </summary>
    internal sealed class PollTarget
    {
        internal readonly int Fd;
        /// <summary>Set (under the poller's lock) before the channel is detached: no more polling.</summary>
        internal bool Forgotten;
        internal readonly List<TaskCompletionSource<bool>> Waiters = new List<TaskCompletionSource<bool>>();

        internal PollTarget(int fd) { Fd = fd; }
    }

    /// <summary>
    /// One background thread per process that sleeps in poll(2) on the descriptors of every
    /// channel with a pending asynchronous receive, and completes their tasks when a descriptor
    /// becomes readable. So an awaited <see cref="Channel.ReceiveAsync"/> holds no thread at all:
    /// its continuation runs on the thread pool only once there is something to receive.
    /// </summary>
    /// <remarks>
    /// A descriptor is polled only while someone waits on it (its readiness may persist until the
    /// next <c>machnet_recv</c>, which the woken waiter makes), so the thread never spins. Every
    /// <see cref="LivenessPeriodMs"/> the waiters are woken to receive again even without
    /// readiness: a <c>machnet_recv</c> that finds nothing checks that the sidecar is alive, so a
    /// receive pending on a dead sidecar fails (ECONNRESET) instead of waiting forever.
    /// </remarks>
    internal sealed unsafe class FdPoller
    {
        internal const int LivenessPeriodMs = 1000;

        private static readonly Lazy<FdPoller> instance = new Lazy<FdPoller>(() => new FdPoller());

        /// <summary>The process's poller (its thread starts on first use).</summary>
        internal static FdPoller Instance { get { return instance.Value; } }

        private readonly object gate = new object();
        /// <summary>Targets with waiters; the next poll(2) covers exactly these.</summary>
        private readonly List<PollTarget> active = new List<PollTarget>();
        /// <summary>The targets of the poll(2) in progress (or about to start).</summary>
        private PollTarget[] polling = new PollTarget[0];
        /// <summary>Completed poll(2) rounds (for <see cref="Forget"/>'s handshake).</summary>
        private long rounds;
        /// <summary>An eventfd that interrupts the poll to pick up new targets.</summary>
        private readonly int wakeFd;

        /// <summary>The polling thread (Forget waits for its rounds only while it runs).</summary>
        private readonly Thread thread;

        private FdPoller()
        {
            wakeFd = LibC.eventfd(0, LibC.EFD_NONBLOCK | LibC.EFD_CLOEXEC);
            if (wakeFd < 0)
                throw new MachnetException("eventfd", Interop.LastErrno(), "eventfd: " + Interop.StrError(Interop.LastErrno()));
            thread = new Thread(Run) { IsBackground = true, Name = "machnet-poller" };
            thread.Start();
        }

        /// <summary>
        /// A task that completes when <paramref name="target"/>'s descriptor may be readable (or it
        /// was forgotten, or after the liveness period); then receive again. Call only after a
        /// <c>machnet_recv</c> on the channel returned 0. Cancel it with <see cref="Cancel"/>.
        /// </summary>
        internal TaskCompletionSource<bool> Wait(PollTarget target)
        {
            var w = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            bool kick;
            lock (gate)
            {
                if (target.Forgotten)
                {
                    w.TrySetResult(true); // the retry reports the disposal
                    return w;
                }
                target.Waiters.Add(w);
                if (target.Waiters.Count == 1)
                    active.Add(target);
                kick = Array.IndexOf(polling, target) < 0;
            }
            if (kick)
                Kick();
            return w;
        }

        /// <summary>Withdraws a waiter (cancellation); true if it was still waiting.</summary>
        internal bool Cancel(PollTarget target, TaskCompletionSource<bool> w)
        {
            lock (gate)
            {
                if (!target.Waiters.Remove(w))
                    return false;
                if (target.Waiters.Count == 0)
                    active.Remove(target);
            }
            // Its descriptor may stay in the poll in progress: one spurious round at most.
            return true;
        }

        /// <summary>
        /// Stops polling <paramref name="target"/> before its channel is detached (its descriptor is
        /// closed then and the number may be reused): wakes its waiters (they retry and see the
        /// disposal) and returns once no poll(2) in progress can still use the descriptor.
        /// </summary>
        internal void Forget(PollTarget target)
        {
            List<TaskCompletionSource<bool>> woken;
            lock (gate)
            {
                target.Forgotten = true;
                woken = new List<TaskCompletionSource<bool>>(target.Waiters);
                target.Waiters.Clear();
                active.Remove(target);
                if (Array.IndexOf(polling, target) >= 0 && Thread.CurrentThread != thread)
                {
                    long seen = rounds;
                    Kick();
                    // Only while the poller can still finish a round: a finalizer that runs while
                    // the process exits or its AppDomain unloads (the poller aborted or suspended)
                    // must not wait for it, or the exit hangs; no poll can reuse the descriptor then.
                    while (rounds == seen && thread.IsAlive && !Exiting())
                        Monitor.Wait(gate, 100);
                }
            }
            foreach (var w in woken)
                w.TrySetResult(true);
        }

        private static bool Exiting()
        {
            return Environment.HasShutdownStarted || AppDomain.CurrentDomain.IsFinalizingForUnload();
        }

        private void Kick()
        {
            ulong one = 1;
            LibC.write(wakeFd, &one, (UIntPtr)8); // EAGAIN: already readable, fine
        }

        private void Run()
        {
            var fds = new LibC.PollFd[1];
            var woken = new List<TaskCompletionSource<bool>>();
            while (true)
            {
                int n;
                lock (gate)
                {
                    polling = active.ToArray();
                    if (fds.Length < polling.Length + 1)
                        fds = new LibC.PollFd[Math.Max(polling.Length + 1, fds.Length * 2)];
                    fds[0] = new LibC.PollFd { fd = wakeFd, events = LibC.POLLIN };
                    for (int i = 0; i < polling.Length; i++)
                        fds[i + 1] = new LibC.PollFd { fd = polling[i].Fd, events = LibC.POLLIN };
                    n = polling.Length + 1;
                }
                int r;
                fixed (LibC.PollFd* p = fds)
                {
                    r = LibC.poll(p, (UIntPtr)n, n > 1 ? LivenessPeriodMs : -1);
                }
                if (r < 0 && Interop.LastErrno() != LinuxErrno.EINTR)
                    Thread.Sleep(LivenessPeriodMs); // cannot happen with valid arguments; do not spin
                if (fds[0].revents != 0)
                {
                    ulong v;
                    LibC.read(wakeFd, &v, (UIntPtr)8);
                }
                lock (gate)
                {
                    for (int i = 1; i < n; i++)
                    {
                        // Readable (or POLLERR/POLLNVAL), or the liveness period passed (r == 0).
                        if (fds[i].revents == 0 && r != 0)
                            continue;
                        PollTarget t = polling[i - 1];
                        woken.AddRange(t.Waiters);
                        t.Waiters.Clear();
                        active.Remove(t);
                    }
                    polling = new PollTarget[0];
                    rounds++;
                    Monitor.PulseAll(gate);
                }
                // Continuations run asynchronously: this thread only queues them.
                foreach (var w in woken)
                    w.TrySetResult(true);
                woken.Clear();
            }
        }
    }
}
