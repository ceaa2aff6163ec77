using System;
using System.Net;
using Machnet.Native;

namespace Machnet
{
    /// <summary>
    /// One Machnet connection, named by its 4-tuple (IPv4 addresses and Machnet ports in host byte
    /// order). Flows from <see cref="Channel.Connect(string, string, ushort)"/> have
    /// Source = this sidecar; flows of received messages have Source = the peer.
    /// <see cref="Channel.Send(Flow, byte[])"/> accepts either orientation.
    /// </summary>
    public readonly struct Flow : IEquatable<Flow>
    {
        /// <summary>Source IPv4 address, host byte order (e.g. 0x7f000001 for 127.0.0.1).</summary>
        public uint SourceAddress { get; }

        /// <summary>Destination IPv4 address, host byte order.</summary>
        public uint DestinationAddress { get; }

        /// <summary>Source Machnet port.</summary>
        public ushort SourcePort { get; }

        /// <summary>Destination Machnet port.</summary>
        public ushort DestinationPort { get; }

        /// <summary>Creates a flow from its 4-tuple.</summary>
        /// <param name="sourceAddress">Source IPv4 address, host byte order.</param>
        /// <param name="sourcePort">Source Machnet port.</param>
        /// <param name="destinationAddress">Destination IPv4 address, host byte order.</param>
        /// <param name="destinationPort">Destination Machnet port.</param>
        public Flow(uint sourceAddress, ushort sourcePort, uint destinationAddress, ushort destinationPort)
        {
            SourceAddress = sourceAddress;
            SourcePort = sourcePort;
            DestinationAddress = destinationAddress;
            DestinationPort = destinationPort;
        }

        internal Flow(MachnetFlow f) : this(f.src_ip, f.src_port, f.dst_ip, f.dst_port) { }

        internal MachnetFlow ToNative()
        {
            return new MachnetFlow { src_ip = SourceAddress, dst_ip = DestinationAddress, src_port = SourcePort, dst_port = DestinationPort };
        }

        /// <summary>The same flow seen from the other end (source and destination swapped).</summary>
        public Flow Reversed
        {
            get { return new Flow(DestinationAddress, DestinationPort, SourceAddress, SourcePort); }
        }

        /// <summary>Source address and port.</summary>
        public IPEndPoint Source
        {
            get { return new IPEndPoint(ToAddress(SourceAddress), SourcePort); }
        }

        /// <summary>Destination address and port.</summary>
        public IPEndPoint Destination
        {
            get { return new IPEndPoint(ToAddress(DestinationAddress), DestinationPort); }
        }

        private static IPAddress ToAddress(uint hostOrder)
        {
            return new IPAddress(new[] { (byte)(hostOrder >> 24), (byte)(hostOrder >> 16), (byte)(hostOrder >> 8), (byte)hostOrder });
        }

        /// <summary>Whether both flows have the same 4-tuple in the same orientation.</summary>
        /// <param name="other">The flow to compare with.</param>
        public bool Equals(Flow other)
        {
            return SourceAddress == other.SourceAddress && DestinationAddress == other.DestinationAddress
                && SourcePort == other.SourcePort && DestinationPort == other.DestinationPort;
        }

        /// <inheritdoc/>
        public override bool Equals(object obj) { return obj is Flow && Equals((Flow)obj); }

        /// <inheritdoc/>
        public override int GetHashCode()
        {
            unchecked
            {
                return (int)(SourceAddress * 31 + DestinationAddress) * 31 + (SourcePort << 16 | DestinationPort);
            }
        }

        /// <summary>Equality of 4-tuples.</summary>
        public static bool operator ==(Flow a, Flow b) { return a.Equals(b); }

        /// <summary>Inequality of 4-tuples.</summary>
        public static bool operator !=(Flow a, Flow b) { return !a.Equals(b); }

        /// <summary>"src:port -&gt; dst:port".</summary>
        public override string ToString() { return Source + " -> " + Destination; }
    }

    /// <summary>A received message: its bytes and the flow it came on (Source = the peer).</summary>
    public sealed class Message
    {
        /// <summary>The flow (Source = the peer, Destination = this sidecar).</summary>
        public Flow Flow { get; }

        /// <summary>The message's bytes (an array of exactly the message's length).</summary>
        public byte[] Data { get; }

        /// <summary>Creates a message.</summary>
        /// <param name="flow">The flow it came on.</param>
        /// <param name="data">Its bytes.</param>
        /// <exception cref="ArgumentNullException"><paramref name="data"/> is null.</exception>
        public Message(Flow flow, byte[] data)
        {
            if (data == null)
                throw new ArgumentNullException("data");
            Flow = flow;
            Data = data;
        }
    }
}
