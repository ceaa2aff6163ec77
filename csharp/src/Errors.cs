using System;
using Machnet.Native;

namespace Machnet
{
    /// <summary>
    /// What every exception libmachnet's failures become has: the C function, the <c>errno</c> value
    /// and the stable code name (<c>ERR_MACHNET_*</c>, the same in every binding). Implemented by <see cref="MachnetException"/> and by
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

        /// <summary>
        /// The stable code name, e.g. <c>"ERR_MACHNET_FLOW_RESET"</c> (libmachnet's
        /// <c>machnet_last_error_code</c>; Python <c>exc.code</c>, Node.js <c>err.code</c>, Go
        /// <c>Error.Code</c>): finer than <see cref="Errno"/>, which several conditions share
        /// (ECONNRESET is a reset flow or a gone sidecar).
        /// </summary>
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

        /// <inheritdoc/>
        public string CodeName { get; internal set; }

        /// <summary>Creates an exception for <paramref name="operation"/> failing with <paramref name="errno"/>
        /// (<see cref="CodeName"/>: what <paramref name="errno"/> stands for, see <see cref="ErrorCodes"/>).</summary>
        /// <param name="operation">The libmachnet function.</param>
        /// <param name="errno">The errno value.</param>
        /// <param name="message">The explanation shown to people.</param>
        public MachnetException(string operation, int errno, string message)
            : base(message)
        {
            Operation = operation;
            Errno = errno;
            CodeName = ErrorCodes.OfErrno(errno);
        }

        /// <summary>
        /// Builds the exception for the current thread's failed call to <paramref name="operation"/>:
        /// the class <see cref="ErrorCodes"/> gives libmachnet's code name, with its detailed message.
        /// Must run on the thread that made the call (both are thread-local). ERR_MACHNET_TIMEOUT
        /// gives a <see cref="MachnetTimeoutException"/> (not a MachnetException: see there).
        /// </summary>
        internal static Exception FromErrno(string operation, int errno, long needed = 0)
        {
            string detail = Interop.LastError();
            if (string.IsNullOrEmpty(detail))
                detail = Interop.StrError(errno);
            string code = Interop.LastErrorCode();
            if (string.IsNullOrEmpty(code))
                code = ErrorCodes.OfErrno(errno);
            return ErrorCodes.Create(operation, errno, code, operation + ": " + detail, needed);
        }
    }

    /// <summary>
    /// The binding's one error mapping: each code name libmachnet reports
    /// (<c>machnet_last_error_code</c>, the names of rust-client's <c>ErrorKind</c>), its errno
    /// and the exception class it becomes. Where no code name is available (a flow event, a check
    /// of the binding's own), the first row with the errno gives it.
    /// </summary>
    internal static class ErrorCodes
    {
        /// <summary>The code name of a receive buffer too small for the waiting message.</summary>
        internal const string BufferTooSmall = "ERR_MACHNET_BUFFER_TOO_SMALL";
        /// <summary>The code name of an argument libmachnet would refuse.</summary>
        internal const string InvalidArgument = "ERR_MACHNET_INVALID_ARGUMENT";

        private delegate Exception Make(string op, int errno, string code, string msg, long needed);

        private sealed class Row
        {
            internal readonly string Code;
            internal readonly int Errno;
            internal readonly Make Make;

            internal Row(string code, int errno, Make make)
            {
                Code = code;
                Errno = errno;
                Make = make;
            }
        }

        private static readonly Make Plain = (o, e, c, m, n) => new MachnetException(o, e, m) { CodeName = c };
        private static readonly Make Size = (o, e, c, m, n) => new MessageSizeException(o, e, m, n) { CodeName = c };
        private static readonly Make FlowClosed = (o, e, c, m, n) => new FlowClosedException(o, e, m) { CodeName = c };
        private static readonly Make ChannelClosed = (o, e, c, m, n) => new ChannelClosedException(o, e, m) { CodeName = c };

        private static readonly Row[] Rows =
        {
            new Row("ERR_MACHNET_EXHAUSTED", LinuxErrno.EAGAIN, Plain),
            new Row("ERR_MACHNET_WOULD_BLOCK", LinuxErrno.EAGAIN, Plain),
            new Row("ERR_MACHNET_TIMEOUT", LinuxErrno.ETIMEDOUT, (o, e, c, m, n) => new MachnetTimeoutException(o, e, m) { CodeName = c }),
            new Row("ERR_MACHNET_INTERRUPTED", LinuxErrno.EINTR, Plain),
            new Row(InvalidArgument, LinuxErrno.EINVAL, Plain),
            new Row("ERR_MACHNET_MESSAGE_TOO_LARGE", LinuxErrno.EMSGSIZE, Size),
            new Row(BufferTooSmall, LinuxErrno.EMSGSIZE, Size),
            new Row("ERR_MACHNET_FLOW_CLOSED", LinuxErrno.ENOTCONN, FlowClosed),
            new Row("ERR_MACHNET_FLOW_CLOSED", LinuxErrno.EPIPE, FlowClosed),
            new Row("ERR_MACHNET_FLOW_RESET", LinuxErrno.ECONNRESET, FlowClosed),
            new Row("ERR_MACHNET_CONNECTION_REFUSED", LinuxErrno.ECONNREFUSED, (o, e, c, m, n) => new ConnectionRefusedException(o, e, m) { CodeName = c }),
            new Row("ERR_MACHNET_CHANNEL_CLOSED", LinuxErrno.ECONNABORTED, ChannelClosed),
            new Row("ERR_MACHNET_CHANNEL_CLOSED", LinuxErrno.EBADF, ChannelClosed),
            new Row("ERR_MACHNET_SIDECAR_UNREACHABLE", LinuxErrno.ENOENT, Plain),
            new Row("ERR_MACHNET_SIDECAR_GONE", LinuxErrno.ECONNRESET, (o, e, c, m, n) => new SidecarGoneException(o, e, m) { CodeName = c }),
            new Row("ERR_MACHNET_REFUSED", LinuxErrno.EPERM, Plain),
            new Row("ERR_MACHNET_PERMISSION_DENIED", LinuxErrno.EACCES, Plain),
            new Row("ERR_MACHNET_PROTOCOL", LinuxErrno.EPROTO, Plain),
            new Row("ERR_MACHNET_VERSION_MISMATCH", LinuxErrno.EPROTO, Plain),
            new Row("ERR_MACHNET_PORT_IN_USE", LinuxErrno.EADDRINUSE, (o, e, c, m, n) => new PortInUseException(o, e, m) { CodeName = c }),
            new Row("ERR_MACHNET_IO", LinuxErrno.EIO, Plain),
        };

        /// <summary>The code name <paramref name="errno"/> stands for when libmachnet gave none.</summary>
        internal static string OfErrno(int errno)
        {
            foreach (Row r in Rows)
            {
                if (r.Errno == errno)
                    return r.Code;
            }
            return "ERR_MACHNET_IO";
        }

        /// <summary>The exception for <paramref name="operation"/> failing with <paramref name="code"/>.</summary>
        internal static Exception Create(string operation, int errno, string code, string message, long needed)
        {
            // The C ABI reports machnet_attach before machnet_init as ENOTCONN (a flow-closed code).
            if (operation == "machnet_attach" && errno == LinuxErrno.ENOTCONN)
                return new NotInitializedException(operation, errno, message) { CodeName = code };
            foreach (Row r in Rows)
            {
                if (r.Code == code)
                    return r.Make(operation, errno, code, message, needed);
            }
            return Plain(operation, errno, code, message, needed);
        }
    }

    /// <summary>The remote host refused the connection (ECONNREFUSED): nothing listens on that port.</summary>
    public class ConnectionRefusedException : MachnetException
    {
        /// <summary>See <see cref="MachnetException"/>.</summary>
        public ConnectionRefusedException(string operation, int errno, string message) : base(operation, errno, message) { }
    }

    /// <summary>The sidecar exited, crashed or is shutting down (ERR_MACHNET_SIDECAR_GONE, ECONNRESET;
    /// a reset flow is a <see cref="FlowClosedException"/> with ERR_MACHNET_FLOW_RESET).</summary>
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
    /// <see cref="CodeName"/> "ERR_MACHNET_TIMEOUT").
    /// </remarks>
    public class MachnetTimeoutException : TimeoutException, IMachnetError
    {
        /// <summary>The libmachnet function (or binding operation) that timed out.</summary>
        public string Operation { get; }

        /// <summary>ETIMEDOUT (110).</summary>
        public int Errno { get; }

        /// <summary>"ERR_MACHNET_TIMEOUT".</summary>
        public string CodeName { get; internal set; }

        /// <summary>Creates a timeout exception for <paramref name="operation"/>.</summary>
        /// <param name="operation">The libmachnet function.</param>
        /// <param name="errno">The errno value (ETIMEDOUT).</param>
        /// <param name="message">The explanation shown to people.</param>
        public MachnetTimeoutException(string operation, int errno, string message)
            : base(message)
        {
            Operation = operation;
            Errno = errno;
            CodeName = ErrorCodes.OfErrno(errno);
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
    /// libmachnet no longer knows the channel (EBADF): it was detached, e.g. by another handle; or
    /// the sidecar closed it (ECONNABORTED). Both are ERR_MACHNET_CHANNEL_CLOSED.
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
    /// The flow is not open on this channel, or this side closed it (ERR_MACHNET_FLOW_CLOSED:
    /// ENOTCONN, EPIPE), or it was reset (ERR_MACHNET_FLOW_RESET, ECONNRESET); or, made by
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

    /// <summary>
    /// An argument libmachnet would refuse, caught by the binding before calling it (an empty
    /// message): an <see cref="ArgumentException"/>, as .NET code expects, that also tells the
    /// code name (ERR_MACHNET_INVALID_ARGUMENT, EINVAL) like every <see cref="IMachnetError"/>.
    /// </summary>
    public class MachnetArgumentException : ArgumentException, IMachnetError
    {
        /// <summary>The libmachnet function the binding did not call, e.g. <c>machnet_send</c>.</summary>
        public string Operation { get; }

        /// <summary>EINVAL (22).</summary>
        public int Errno { get { return LinuxErrno.EINVAL; } }

        /// <summary>"ERR_MACHNET_INVALID_ARGUMENT".</summary>
        public string CodeName { get { return ErrorCodes.InvalidArgument; } }

        /// <summary>Creates the exception.</summary>
        /// <param name="operation">The libmachnet function.</param>
        /// <param name="message">The explanation shown to people.</param>
        /// <param name="paramName">The argument.</param>
        public MachnetArgumentException(string operation, string message, string paramName)
            : base(message, paramName)
        {
            Operation = operation;
        }
    }
}
