using System;
using System.IO;
using System.Runtime.InteropServices;
using System.Threading;
using Machnet.Native;

namespace Machnet
{
    // Zero-copy send (machnet_loan / machnet_commit / machnet_loan_cancel) and receive
    // (machnet_recv_zc / machnet_release): the message's bytes live in the channel's shared
    // memory. C# 7.2 on mono has no Span<T>: SendLoan and MessageView give the memory as a
    // pointer, an indexer, array copies and an UnmanagedMemoryStream, each checking on every
    // access that the loan or view is still live.
    public sealed unsafe partial class Channel
    {
        /// <summary>
        /// Loans room for one message of up to <paramref name="length"/> bytes on
        /// <paramref name="flow"/> directly in the channel's shared memory, waiting while the
        /// sidecar applies back-pressure (like <see cref="Send(Flow, byte[])"/>) and while another
        /// thread's loan is out. Write the message into the loan, then
        /// <see cref="SendLoan.Commit(int)"/> it (or <see cref="SendLoan.Cancel"/>; disposing it
        /// cancels it). See <see cref="SendLoan"/> for the rules.
        /// </summary>
        /// <param name="flow">The flow (either orientation).</param>
        /// <param name="length">1 byte to <see cref="Sidecar.MaxMessageLength"/> bytes.</param>
        /// <returns>The loan; its initial contents are unspecified.</returns>
        /// <exception cref="ArgumentException"><paramref name="length"/> is less than 1.</exception>
        /// <exception cref="MessageSizeException">Longer than <see cref="Sidecar.MaxMessageLength"/>.</exception>
        /// <exception cref="FlowClosedException">The flow is not open.</exception>
        /// <exception cref="MachnetException">Errno 16 (EBUSY, ERR_MACHNET_WOULD_BLOCK): this thread holds the channel's loan.</exception>
        public SendLoan Loan(Flow flow, int length)
        {
            SendLoan loan;
            LoanCore(flow, length, true, out loan);
            return loan;
        }

        /// <summary>
        /// <see cref="Loan(Flow, int)"/> without waiting: false if the channel lacks room for the
        /// message now.
        /// </summary>
        /// <param name="flow">The flow (either orientation).</param>
        /// <param name="length">1 byte to <see cref="Sidecar.MaxMessageLength"/> bytes.</param>
        /// <param name="loan">The loan, or null.</param>
        /// <returns>Whether the room was loaned.</returns>
        /// <exception cref="MachnetException">Errno 16 (EBUSY): a loan is out on the channel.</exception>
        public bool TryLoan(Flow flow, int length, out SendLoan loan)
        {
            return LoanCore(flow, length, false, out loan);
        }

        private bool LoanCore(Flow flow, int length, bool wait, out SendLoan loan)
        {
            if (length < 1)
                throw new MachnetArgumentException("machnet_loan", "a message has at least 1 byte", "length");
            MachnetFlow f = flow.ToNative();
            void* p;
            while ((wait ? NativeMethods.machnet_loan(Handle, f, (UIntPtr)length, &p)
                         : NativeMethods.machnet_try_loan(Handle, f, (UIntPtr)length, &p)) != 0)
            {
                int errno = Interop.LastErrno();
                if (!wait && errno == LinuxErrno.EAGAIN)
                {
                    loan = null;
                    return false;
                }
                if (errno != LinuxErrno.EINTR) // woken by an Interrupt meant for a receiver: retry
                    throw Fail("machnet_loan", errno);
            }
            GC.KeepAlive(this);
            loan = new SendLoan(this, flow, (byte*)p, length);
            return true;
        }

        /// <summary>Sends the first <paramref name="used"/> bytes of the channel's loan (0 if out of range: refused, loan cancelled).</summary>
        internal void CommitLoan(int used)
        {
            if (NativeMethods.machnet_commit(Handle, (UIntPtr)(used < 0 ? 0 : used)) != 0)
                throw Fail("machnet_commit", Interop.LastErrno());
            GC.KeepAlive(this);
        }

        /// <summary>Ends the channel's loan without sending (nothing to do once disposed).</summary>
        internal void CancelLoan()
        {
            if (!IsDisposed && NativeMethods.machnet_loan_cancel((void*)ctx) != 0)
            {
                int errno = Interop.LastErrno();
                if (!(errno == LinuxErrno.EBADF && IsDisposed))
                    throw Fail("machnet_loan_cancel", errno);
            }
            GC.KeepAlive(this);
        }

        /// <summary>Gives the borrowed message back (nothing to do once disposed).</summary>
        internal void ReleaseView()
        {
            if (!IsDisposed && NativeMethods.machnet_release((void*)ctx) != 0)
            {
                int errno = Interop.LastErrno();
                if (!(errno == LinuxErrno.EBADF && IsDisposed))
                    throw Fail("machnet_release", errno);
            }
            GC.KeepAlive(this);
        }

        /// <summary>
        /// Waits without limit for the next message and borrows it in place (no copy): see
        /// <see cref="MessageView"/>. Release (or dispose) the view when done with it.
        /// </summary>
        /// <returns>The view.</returns>
        /// <exception cref="MachnetException">Errno 16 (EBUSY, ERR_MACHNET_WOULD_BLOCK): this thread holds the channel's view.</exception>
        /// <exception cref="ObjectDisposedException">The channel is or gets disposed.</exception>
        public MessageView ReceiveView()
        {
            MessageView v;
            ReceiveViewCore(-1, out v);
            return v;
        }

        /// <summary>Waits up to <paramref name="timeout"/> for the next message and borrows it in place.</summary>
        /// <param name="timeout">How long to wait (<see cref="TimeSpan.Zero"/>: only take a waiting one;
        /// <see cref="Timeout.InfiniteTimeSpan"/>: without limit).</param>
        /// <returns>The view.</returns>
        /// <exception cref="MachnetTimeoutException">No message came (or another thread's view was not released) in time.</exception>
        /// <exception cref="MachnetException">Errno 16 (EBUSY): this thread holds the channel's view.</exception>
        public MessageView ReceiveView(TimeSpan timeout)
        {
            MessageView v;
            if (!ReceiveViewCore(Interop.TimeoutMs(timeout, "timeout"), out v))
                throw new MachnetTimeoutException("machnet_recv_zc_timeout", LinuxErrno.ETIMEDOUT, "no message within " + timeout);
            return v;
        }

        /// <summary>Waits up to <paramref name="timeout"/> for the next message and borrows it in place; false if none came.</summary>
        /// <param name="timeout">How long to wait (<see cref="TimeSpan.Zero"/>: only take a waiting one).</param>
        /// <param name="view">The view, or null.</param>
        /// <returns>Whether a message was borrowed.</returns>
        /// <exception cref="MachnetException">Errno 16 (EBUSY): a view is out (with a zero timeout: anybody's; else: this thread's).</exception>
        public bool TryReceiveView(TimeSpan timeout, out MessageView view)
        {
            return ReceiveViewCore(Interop.TimeoutMs(timeout, "timeout"), out view);
        }

        private bool ReceiveViewCore(int timeoutMs, out MessageView view)
        {
            RaiseFlowEvents();
            long deadline = timeoutMs < 0 ? long.MaxValue
                : System.Diagnostics.Stopwatch.GetTimestamp() + timeoutMs * System.Diagnostics.Stopwatch.Frequency / 1000;
            while (true)
            {
                void* d;
                UIntPtr n;
                MachnetFlow f;
                int ms = RemainingMs(timeoutMs, deadline);
                int r = timeoutMs == 0
                    ? NativeMethods.machnet_recv_zc(Handle, &d, &n, &f)
                    : NativeMethods.machnet_recv_zc_timeout(Handle, &d, &n, &f, ms);
                if (r == 1)
                {
                    GC.KeepAlive(this);
                    view = new MessageView(this, new Flow(f), (byte*)d, (int)(ulong)n);
                    return true;
                }
                int errno = r < 0 ? Interop.LastErrno() : 0;
                bool timedOut = timeoutMs >= 0 && (ms == 0 || System.Diagnostics.Stopwatch.GetTimestamp() >= deadline);
                // Past its deadline machnet_recv_zc_timeout reports another thread's view as EBUSY.
                if (r == 0 || errno == LinuxErrno.EINTR || (errno == LinuxErrno.EBUSY && timeoutMs > 0 && timedOut))
                {
                    if (timedOut)
                    {
                        RaiseFlowEvents();
                        view = null;
                        return false;
                    }
                    continue;
                }
                throw Fail("machnet_recv_zc", errno);
            }
        }
    }

    /// <summary>
    /// Room for one message in the channel's shared memory (<see cref="Channel.Loan"/>): write
    /// the message through the indexer, <see cref="CopyFrom(byte[])"/>, <see cref="AsStream"/> or
    /// <see cref="Pointer"/>, then <see cref="Commit(int)"/> the bytes used. Nothing is copied on
    /// the application's side.
    /// </summary>
    /// <remarks>
    /// One loan is out per channel at a time. While it is, sends and loans from other threads
    /// wait for it to end; from the thread holding it they throw a <see cref="MachnetException"/>
    /// with errno 16 (EBUSY, ERR_MACHNET_WOULD_BLOCK) (they would wait for themselves), so do not
    /// hold a loan across an <c>await</c> that may resume on another thread. Connects fail while
    /// it is out. Any thread may commit or cancel it, once. The loan is over after
    /// <see cref="Commit(int)"/>, <see cref="Cancel"/> or <see cref="Dispose"/> (which cancels a
    /// live loan: <c>using</c> blocks give a failed write path its room back), and when the
    /// channel is disposed: every access afterwards throws <see cref="ObjectDisposedException"/>.
    /// <see cref="Pointer"/> and streams from <see cref="AsStream"/> point into the channel's
    /// memory: do not use a pointer kept from before the end (the stream checks).
    /// </remarks>
    public sealed unsafe class SendLoan : IDisposable
    {
        private readonly Channel channel;
        private readonly byte* ptr;
        private readonly int length;
        private int over;

        internal SendLoan(Channel channel, Flow flow, byte* ptr, int length)
        {
            this.channel = channel;
            Flow = flow;
            this.ptr = ptr;
            this.length = length;
        }

        /// <summary>The flow the message goes out on.</summary>
        public Flow Flow { get; }

        /// <summary>The length loaned (what <see cref="Commit(int)"/> may send at most).</summary>
        public int Length { get { return length; } }

        /// <summary>Whether the loan is still out (not committed, cancelled or disposed, and its channel not disposed).</summary>
        public bool IsLive { get { return Volatile.Read(ref over) == 0 && !channel.IsDisposed; } }

        /// <summary>The first byte of the loaned room (valid while the loan is live).</summary>
        /// <exception cref="ObjectDisposedException">The loan is over.</exception>
        public IntPtr Pointer
        {
            get
            {
                Check();
                return (IntPtr)ptr;
            }
        }

        private void Check()
        {
            if (Volatile.Read(ref over) != 0 || channel.IsDisposed)
                throw new ObjectDisposedException(GetType().FullName, "the loan was committed, cancelled or disposed, or its channel disposed");
        }

        /// <summary>A byte of the loaned room.</summary>
        /// <param name="index">0 to <see cref="Length"/> - 1.</param>
        /// <exception cref="ObjectDisposedException">The loan is over.</exception>
        /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is outside the room.</exception>
        public byte this[int index]
        {
            get
            {
                Check();
                if ((uint)index >= (uint)length)
                    throw new ArgumentOutOfRangeException("index");
                return ptr[index];
            }
            set
            {
                Check();
                if ((uint)index >= (uint)length)
                    throw new ArgumentOutOfRangeException("index");
                ptr[index] = value;
            }
        }

        /// <summary>Copies <paramref name="source"/> to the start of the room.</summary>
        /// <param name="source">At most <see cref="Length"/> bytes.</param>
        /// <exception cref="ObjectDisposedException">The loan is over.</exception>
        public void CopyFrom(byte[] source)
        {
            if (source == null)
                throw new ArgumentNullException("source");
            CopyFrom(source, 0, 0, source.Length);
        }

        /// <summary>Copies <paramref name="count"/> bytes of <paramref name="source"/> from
        /// <paramref name="sourceOffset"/> into the room at <paramref name="destinationOffset"/>.</summary>
        /// <param name="source">The bytes.</param>
        /// <param name="sourceOffset">Where they start in <paramref name="source"/>.</param>
        /// <param name="destinationOffset">Where they go in the room.</param>
        /// <param name="count">How many.</param>
        /// <exception cref="ObjectDisposedException">The loan is over.</exception>
        /// <exception cref="ArgumentException">A range is outside its buffer.</exception>
        public void CopyFrom(byte[] source, int sourceOffset, int destinationOffset, int count)
        {
            Check();
            ZeroCopyRange.Check(source, sourceOffset, count, "source");
            ZeroCopyRange.Check(length, destinationOffset, count);
            Marshal.Copy(source, sourceOffset, (IntPtr)(ptr + destinationOffset), count);
        }

        /// <summary>Copies <paramref name="count"/> bytes of the room from
        /// <paramref name="sourceOffset"/> into <paramref name="destination"/> at <paramref name="destinationOffset"/>.</summary>
        /// <param name="sourceOffset">Where they start in the room.</param>
        /// <param name="destination">The array.</param>
        /// <param name="destinationOffset">Where they go in <paramref name="destination"/>.</param>
        /// <param name="count">How many.</param>
        /// <exception cref="ObjectDisposedException">The loan is over.</exception>
        public void CopyTo(int sourceOffset, byte[] destination, int destinationOffset, int count)
        {
            Check();
            ZeroCopyRange.Check(length, sourceOffset, count);
            ZeroCopyRange.Check(destination, destinationOffset, count, "destination");
            Marshal.Copy((IntPtr)(ptr + sourceOffset), destination, destinationOffset, count);
        }

        /// <summary>A read-write stream over the room (position 0, length <see cref="Length"/>);
        /// it throws <see cref="ObjectDisposedException"/> once the loan is over.</summary>
        /// <returns>The stream.</returns>
        /// <exception cref="ObjectDisposedException">The loan is over.</exception>
        public UnmanagedMemoryStream AsStream()
        {
            Check();
            return new LiveMemoryStream(ptr, length, FileAccess.ReadWrite, Check);
        }

        /// <summary>Sends the whole room as one message (see <see cref="Commit(int)"/>).</summary>
        public void Commit() { Commit(length); }

        /// <summary>
        /// Sends the first <paramref name="used"/> bytes as one message; the rest of the room is
        /// given back. The loan is over whatever the result; on an exception nothing was sent.
        /// Returning promises what a returned <see cref="Channel.Send(Flow, byte[])"/> promises.
        /// </summary>
        /// <param name="used">1 to <see cref="Length"/>.</param>
        /// <exception cref="ObjectDisposedException">The loan is already over.</exception>
        /// <exception cref="MachnetArgumentException"><paramref name="used"/> is out of range (the loan is cancelled).</exception>
        /// <exception cref="FlowClosedException">The flow ended meanwhile.</exception>
        public void Commit(int used)
        {
            if (channel.IsDisposed || Interlocked.Exchange(ref over, 1) != 0)
                throw new ObjectDisposedException(GetType().FullName, "the loan was committed, cancelled or disposed, or its channel disposed");
            if (used < 1 || used > length)
            {
                channel.CancelLoan();
                throw new MachnetArgumentException("machnet_commit",
                    "commit of " + used + " bytes of a " + length + "-byte loan (1.." + length + "); the loan is cancelled", "used");
            }
            channel.CommitLoan(used);
        }

        /// <summary>Ends the loan without sending anything.</summary>
        /// <exception cref="ObjectDisposedException">The loan is already over.</exception>
        public void Cancel()
        {
            if (Interlocked.Exchange(ref over, 1) != 0)
                throw new ObjectDisposedException(GetType().FullName, "the loan was already committed, cancelled or disposed");
            channel.CancelLoan();
        }

        /// <summary>Cancels the loan if it is still out; does nothing otherwise.</summary>
        public void Dispose()
        {
            if (Interlocked.Exchange(ref over, 1) == 0)
                channel.CancelLoan();
        }
    }

    /// <summary>
    /// A received message borrowed in place in the channel's shared memory
    /// (<see cref="Channel.ReceiveView()"/>): read it through the indexer,
    /// <see cref="CopyTo(byte[])"/>, <see cref="ToArray"/>, <see cref="AsStream"/> or
    /// <see cref="Pointer"/> (do not write through it), then <see cref="Release"/> it so the
    /// sidecar may reuse its space.
    /// </summary>
    /// <remarks>
    /// One view is out per channel at a time. While it is, copying receives
    /// (<see cref="Channel.Receive()"/>, ...) go on and return the messages after it; a zero-copy
    /// receive from another thread waits for the release, from the holding thread (or with a
    /// zero timeout) throws a <see cref="MachnetException"/> with errno 16 (EBUSY,
    /// ERR_MACHNET_WOULD_BLOCK). Any thread may release it. After <see cref="Release"/>,
    /// <see cref="Dispose"/> or the channel's disposal every access throws
    /// <see cref="ObjectDisposedException"/> (a second <see cref="Release"/> too; <see cref="Dispose"/>
    /// does nothing). Copy what must outlive the view.
    /// </remarks>
    public sealed unsafe class MessageView : IDisposable
    {
        private readonly Channel channel;
        private readonly byte* ptr;
        private readonly int length;
        private int over;

        internal MessageView(Channel channel, Flow flow, byte* ptr, int length)
        {
            this.channel = channel;
            Flow = flow;
            this.ptr = ptr;
            this.length = length;
        }

        /// <summary>The message's flow (Source = the peer).</summary>
        public Flow Flow { get; }

        /// <summary>The message's length.</summary>
        public int Length { get { return length; } }

        /// <summary>Whether the view is still out (not released or disposed, and its channel not disposed).</summary>
        public bool IsLive { get { return Volatile.Read(ref over) == 0 && !channel.IsDisposed; } }

        /// <summary>The message's first byte (valid until the release; read only).</summary>
        /// <exception cref="ObjectDisposedException">The view was released.</exception>
        public IntPtr Pointer
        {
            get
            {
                Check();
                return (IntPtr)ptr;
            }
        }

        private void Check()
        {
            if (Volatile.Read(ref over) != 0 || channel.IsDisposed)
                throw new ObjectDisposedException(GetType().FullName, "the view was released or disposed, or its channel disposed");
        }

        /// <summary>A byte of the message.</summary>
        /// <param name="index">0 to <see cref="Length"/> - 1.</param>
        /// <exception cref="ObjectDisposedException">The view was released.</exception>
        /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is outside the message.</exception>
        public byte this[int index]
        {
            get
            {
                Check();
                if ((uint)index >= (uint)length)
                    throw new ArgumentOutOfRangeException("index");
                return ptr[index];
            }
        }

        /// <summary>Copies the whole message to the start of <paramref name="destination"/>.</summary>
        /// <param name="destination">At least <see cref="Length"/> bytes.</param>
        /// <exception cref="ObjectDisposedException">The view was released.</exception>
        public void CopyTo(byte[] destination)
        {
            CopyTo(0, destination, 0, length);
        }

        /// <summary>Copies <paramref name="count"/> bytes of the message from
        /// <paramref name="sourceOffset"/> into <paramref name="destination"/> at <paramref name="destinationOffset"/>.</summary>
        /// <param name="sourceOffset">Where they start in the message.</param>
        /// <param name="destination">The array.</param>
        /// <param name="destinationOffset">Where they go in <paramref name="destination"/>.</param>
        /// <param name="count">How many.</param>
        /// <exception cref="ObjectDisposedException">The view was released.</exception>
        /// <exception cref="ArgumentException">A range is outside its buffer.</exception>
        public void CopyTo(int sourceOffset, byte[] destination, int destinationOffset, int count)
        {
            Check();
            ZeroCopyRange.Check(length, sourceOffset, count);
            ZeroCopyRange.Check(destination, destinationOffset, count, "destination");
            Marshal.Copy((IntPtr)(ptr + sourceOffset), destination, destinationOffset, count);
        }

        /// <summary>A copy of the message.</summary>
        /// <returns>An array of exactly <see cref="Length"/> bytes.</returns>
        /// <exception cref="ObjectDisposedException">The view was released.</exception>
        public byte[] ToArray()
        {
            var a = new byte[length];
            CopyTo(a);
            return a;
        }

        /// <summary>A read-only stream over the message; it throws
        /// <see cref="ObjectDisposedException"/> once the view is released.</summary>
        /// <returns>The stream.</returns>
        /// <exception cref="ObjectDisposedException">The view was released.</exception>
        public UnmanagedMemoryStream AsStream()
        {
            Check();
            return new LiveMemoryStream(ptr, length, FileAccess.Read, Check);
        }

        /// <summary>Gives the message's space back to the sidecar.</summary>
        /// <exception cref="ObjectDisposedException">The view was already released.</exception>
        public void Release()
        {
            if (Interlocked.Exchange(ref over, 1) != 0)
                throw new ObjectDisposedException(GetType().FullName, "the view was already released or disposed");
            channel.ReleaseView();
        }

        /// <summary>Releases the view if it is still out; does nothing otherwise.</summary>
        public void Dispose()
        {
            if (Interlocked.Exchange(ref over, 1) == 0)
                channel.ReleaseView();
        }
    }

    /// <summary>An UnmanagedMemoryStream over a loan or view that checks, on every read or
    /// write, that its owner is still live.</summary>
    internal sealed unsafe class LiveMemoryStream : UnmanagedMemoryStream
    {
        private readonly Action check;

        internal LiveMemoryStream(byte* ptr, int length, FileAccess access, Action check)
            : base(ptr, length, length, access)
        {
            this.check = check;
        }

        public override int Read(byte[] buffer, int offset, int count)
        {
            check();
            return base.Read(buffer, offset, count);
        }

        public override int ReadByte()
        {
            check();
            return base.ReadByte();
        }

        public override void Write(byte[] buffer, int offset, int count)
        {
            check();
            base.Write(buffer, offset, count);
        }

        public override void WriteByte(byte value)
        {
            check();
            base.WriteByte(value);
        }
    }

    /// <summary>Range checks of the zero-copy copies.</summary>
    internal static class ZeroCopyRange
    {
        internal static void Check(byte[] array, int offset, int count, string paramName)
        {
            if (array == null)
                throw new ArgumentNullException(paramName);
            if (offset < 0 || count < 0 || array.Length - offset < count)
                throw new ArgumentOutOfRangeException(paramName, "the range is outside the array");
        }

        internal static void Check(int length, int offset, int count)
        {
            if (offset < 0 || count < 0 || length - offset < count)
                throw new ArgumentOutOfRangeException("offset", "the range is outside the loan or view");
        }
    }
}
