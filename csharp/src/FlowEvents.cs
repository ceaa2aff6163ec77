using System;
using Machnet.Native;

namespace Machnet
{
    /// <summary>What happened to a flow (libmachnet's <c>MACHNET_EVENT_*</c>).</summary>
    public enum FlowEventKind
    {
        /// <summary>The peer closed the flow gracefully: no further message will arrive on it, and
        /// this side is closed too (sends fail with <see cref="FlowClosedException"/>). A
        /// <see cref="Closed"/> event follows once the flow is gone.</summary>
        PeerClosed = (int)NativeMethods.MACHNET_EVENT_PEER_CLOSED,
        /// <summary>The peer reset the flow (it aborted or went away): the flow is gone, messages
        /// it had not delivered are lost (<see cref="FlowEventArgs.Errno"/> ECONNRESET).</summary>
        Reset = (int)NativeMethods.MACHNET_EVENT_RESET,
        /// <summary>The peer stopped answering: the flow is gone (ETIMEDOUT).</summary>
        TimedOut = (int)NativeMethods.MACHNET_EVENT_TIMED_OUT,
        /// <summary>The peer refused the flow: it is gone (ECONNREFUSED).</summary>
        Refused = (int)NativeMethods.MACHNET_EVENT_REFUSED,
        /// <summary>The flow ended: <see cref="FlowEventArgs.Errno"/> is 0 after a graceful end,
        /// otherwise the reason (e.g. ECONNRESET for a flow this side aborted).</summary>
        Closed = (int)NativeMethods.MACHNET_EVENT_CLOSED,
        /// <summary>The sidecar could not carry out a request on the flow (e.g. a send that raced
        /// with its end): that message was not sent; <see cref="FlowEventArgs.Errno"/> says why.</summary>
        RequestFailed = (int)NativeMethods.MACHNET_EVENT_REQUEST_FAILED,
    }

    /// <summary>One flow event: the flow, what happened and the reason as an errno value.</summary>
    public sealed class FlowEventArgs : EventArgs
    {
        /// <summary>The flow, oriented as a received message's: Source = the peer.</summary>
        public Flow Flow { get; }

        /// <summary>What happened.</summary>
        public FlowEventKind Kind { get; }

        /// <summary>The reason as a Linux errno value (0 for a graceful end).</summary>
        public int Errno { get; }

        /// <summary>The code name of the reason, e.g. <c>"ERR_MACHNET_FLOW_RESET"</c> ("" for 0; the names
        /// of <see cref="IMachnetError.CodeName"/>).</summary>
        public string CodeName { get { return Errno == 0 ? string.Empty : ErrorCodes.OfErrno(Errno); } }

        /// <summary>Creates the event (applications receive them; tests may build them).</summary>
        /// <param name="flow">The flow (Source = the peer).</param>
        /// <param name="kind">What happened.</param>
        /// <param name="errno">The reason.</param>
        public FlowEventArgs(Flow flow, FlowEventKind kind, int errno)
        {
            Flow = flow;
            Kind = kind;
            Errno = errno;
        }

        /// <summary>Whether the flow is gone after this event (every kind but
        /// <see cref="FlowEventKind.PeerClosed"/> and <see cref="FlowEventKind.RequestFailed"/>).</summary>
        public bool IsTerminal
        {
            get { return Kind != FlowEventKind.PeerClosed && Kind != FlowEventKind.RequestFailed; }
        }

        /// <summary>The event as an exception, for code that prefers to throw it.</summary>
        /// <returns>A <see cref="FlowClosedException"/> naming the flow and the kind.</returns>
        public FlowClosedException ToException()
        {
            string why = Errno == 0 ? "" : " (" + CodeName + ")";
            return new FlowClosedException("machnet_next_event", Errno == 0 ? LinuxErrno.ENOTCONN : Errno,
                "flow " + Flow + ": " + Kind + why, Flow, Kind);
        }

        /// <inheritdoc/>
        public override string ToString()
        {
            return Kind + " " + Flow + (Errno == 0 ? "" : " " + CodeName);
        }
    }
}
