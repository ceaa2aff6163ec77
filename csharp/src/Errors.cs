using System;
using Machnet.Native;

namespace Machnet
{
    /// <summary>
    /// What every exception libmachnet's failures become has: the C function, the <c>errno</c> value
    /// and its symbolic name. Implemented by <see cref="MachnetException"/> and by
    /// <see cref="MachnetTimeoutException"/> (which derives from <see cref="TimeoutException"/>
    /// instead, so <c>catch (TimeoutException)</c> sees Machnet's timeouts); catch
    /// <c>Exception e when e is IMachnetError</c> (C# 6) to handle both.
    /// </summary>
    public interface IMachnetError
    {
        /// <summary>The libmachnet function that failed, e.g. <c>machnet_send</c>.</summary>
        string Operation { get; }

        /// <summary>The Linux <c>errno</c> value libmachnet reported (e.g. 111 for ECONNREFUSED).</summary>
        int Errno { get; }

        /// <summary>The symbolic name of <see cref="Errno"/>, e.g. <c>"ECONNREFUSED"</c> (<c>"errno 123"</c> for one libmachnet does not document).</summary>
        string CodeName { get; }
    }

    /// <summary>
    /// A failed Machnet call: the C function, the <c>errno</c> value libmachnet set and its detailed
    /// message. Subclasses name the conditions an application usually handles; a timeout is a
    /// <see cref="MachnetTimeoutException"/>, which is a <see cref="TimeoutException"/> and not
    /// one of these (both are <see cref="IMachnetError"/>).
    /// </summary>
    public class MachnetException : Exception, IMachnetError
    {
        /// <summary>The libmachnet function that failed, e.g. <c>machnet_send</c>.</summary>
        public string Operation { get; }

        /// <summary>The Linux <c>errno</c> value libmachnet reported (e.g. 111 for ECONNREFUSED).</summary>
        public int Errno { get; }

        /// <summary>The symbolic name of <see cref="Errno"/>, e.g. <c>"ECONNREFUSED"</c>.</summary>
        public string CodeName { get { return LinuxErrno.Name(Errno); } }

        /// <summary>Creates an exception for <paramref name="operation"/> failing with <paramref name="errno"/>.</summary>
        /// <param name="operation">The libmachnet function.</param>
        /// <param name="errno">The errno value.</param>
        /// <param name="message">The explanation shown to people.</param>
        public MachnetException(string operation, int errno, string message)
            : base(message)
        {
            Operation = operation;
            Errno = errno;
        }

        /// <summary>
        /// Builds the exception for the current thread's failed call to <paramref name="operation"/>:
        /// the most specific subclass for <paramref name="errno"/>, with libmachnet's detailed message.
        /// Must run on the thread that made the call (the detail is thread-local). ETIMEDOUT gives a
        /// <see cref="MachnetTimeoutException"/> (not a MachnetException: see there).
        /// </summary>
        internal static Exception FromErrno(string operation, int errno, long needed = 0)
        {
            string detail = Interop.LastError();
            if (string.IsNullOrEmpty(detail))
                detail = Interop.StrError(errno);
            string msg = operation + ": " + detail;
            switch (errno)
            {
                case LinuxErrno.ECONNREFUSED: return new ConnectionRefusedException(operation, errno, msg);
                case LinuxErrno.ECONNRESET: return new SidecarGoneException(operation, errno, msg);
                case LinuxErrno.ETIMEDOUT: return new MachnetTimeoutException(operation, errno, msg);
                case LinuxErrno.EADDRINUSE: return new PortInUseException(operation, errno, msg);
                case LinuxErrno.EMSGSIZE: return new MessageSizeException(operation, errno, msg, needed);
                case LinuxErrno.EBADF: return new ChannelClosedException(operation, errno, msg);
                case LinuxErrno.ENOTCONN:
                    if (operation == "machnet_attach")
                        return new NotInitializedException(operation, errno, msg);
                    return new FlowClosedException(operation, errno, msg);
                case LinuxErrno.EPIPE: return new FlowClosedException(operation, errno, msg);
                default: return new MachnetException(operation, errno, msg);
            }
        }
    }

    /// <summary>The remote host refused the connection (ECONNREFUSED): nothing listens on that port.</summary>
    public class ConnectionRefusedException : MachnetException
    {
        /// <summary>See <see cref="MachnetException"/>.</summary>
        public ConnectionRefusedException(string operation, int errno, string message) : base(operation, errno, message) { }
    }

    /// <summary>The sidecar exited or crashed, or the flow was reset (ECONNRESET).</summary>
    public class SidecarGoneException : MachnetException
    {
        /// <summary>See <see cref="MachnetException"/>.</summary>
        public SidecarGoneException(string operation, int errno, string message) : base(operation, errno, message) { }
    }

    /// <summary>
    /// A wait ran out of time: a connection attempt (ETIMEDOUT from libmachnet) or a
    /// <see cref="Channel.Receive(TimeSpan)"/> with no message in time.
    /// </summary>
    /// <remarks>
    /// A <see cref="TimeoutException"/>, as .NET code expects of a timeout; C# has single
    /// inheritance, so it is not a <see cref="MachnetException"/>: both implement
    /// <see cref="IMachnetError"/> (<see cref="Operation"/>, <see cref="Errno"/> 110,
    /// <see cref="CodeName"/> "ETIMEDOUT").
    /// </remarks>
    public class MachnetTimeoutException : TimeoutException, IMachnetError
    {
        /// <summary>The libmachnet function (or binding operation) that timed out.</summary>
        public string Operation { get; }

        /// <summary>ETIMEDOUT (110).</summary>
        public int Errno { get; }

        /// <summary>"ETIMEDOUT".</summary>
        public string CodeName { get { return LinuxErrno.Name(Errno); } }

        /// <summary>Creates a timeout exception for <paramref name="operation"/>.</summary>
        /// <param name="operation">The libmachnet function.</param>
        /// <param name="errno">The errno value (ETIMEDOUT).</param>
        /// <param name="message">The explanation shown to people.</param>
        public MachnetTimeoutException(string operation, int errno, string message)
            : base(message)
        {
            Operation = operation;
            Errno = errno;
        }
    }

    /// <summary>Another channel already listens on the port (EADDRINUSE).</summary>
    public class PortInUseException : MachnetException
    {
        /// <summary>See <see cref="MachnetException"/>.</summary>
        public PortInUseException(string operation, int errno, string message) : base(operation, errno, message) { }
    }

    /// <summary>
    /// A message is too large to send (over <see cref="Sidecar.MaxMessageLength"/>), or the waiting
    /// message does not fit the caller's receive buffer (EMSGSIZE); in the latter case the message
    /// stays queued and <see cref="Needed"/> tells its size.
    /// </summary>
    public class MessageSizeException : MachnetException
    {
        /// <summary>On receive: the size of the waiting message in bytes; 0 otherwise.</summary>
        public long Needed { get; }

        /// <summary>See <see cref="MachnetException"/>.</summary>
        /// <param name="operation">The libmachnet function.</param>
        /// <param name="errno">The errno value.</param>
        /// <param name="message">The explanation.</param>
        /// <param name="needed">The size of the waiting message (receive), or 0.</param>
        public MessageSizeException(string operation, int errno, string message, long needed)
            : base(operation, errno, message)
        {
            Needed = needed;
        }
    }

    /// <summary>
    /// libmachnet no longer knows the channel (EBADF): it was detached, e.g. by another handle.
    /// A <see cref="Channel"/> disposed by this process reports <see cref="ObjectDisposedException"/> instead.
    /// </summary>
    public class ChannelClosedException : MachnetException
    {
        /// <summary>See <see cref="MachnetException"/>.</summary>
        public ChannelClosedException(string operation, int errno, string message) : base(operation, errno, message) { }
    }

    /// <summary>The process is not attached to a sidecar: call <see cref="Sidecar.Init(string)"/> first.</summary>
    public class NotInitializedException : MachnetException
    {
        /// <summary>See <see cref="MachnetException"/>.</summary>
        public NotInitializedException(string operation, int errno, string message) : base(operation, errno, message) { }
    }

    /// <summary>
    /// The flow is not open on this channel, or this side closed it (ENOTCONN, EPIPE); or, made by
    /// <see cref="FlowEventArgs.ToException"/>, a flow event: then <see cref="Flow"/> and
    /// <see cref="Kind"/> say which flow and what happened.
    /// </summary>
    public class FlowClosedException : MachnetException
    {
        /// <summary>The flow, when known (from a flow event); null for a failed call.</summary>
        public Flow? Flow { get; }

        /// <summary>What ended the flow, when known (from a flow event); null for a failed call.</summary>
        public FlowEventKind? Kind { get; }

        /// <summary>See <see cref="MachnetException"/>.</summary>
        public FlowClosedException(string operation, int errno, string message) : base(operation, errno, message) { }

        /// <summary>An exception for a flow event.</summary>
        /// <param name="operation">The libmachnet function.</param>
        /// <param name="errno">The errno value.</param>
        /// <param name="message">The explanation.</param>
        /// <param name="flow">The flow.</param>
        /// <param name="kind">What happened to it.</param>
        public FlowClosedException(string operation, int errno, string message, Flow flow, FlowEventKind kind)
            : base(operation, errno, message)
        {
            Flow = flow;
            Kind = kind;
        }
    }
}
