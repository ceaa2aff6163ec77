using System;
using Machnet.Native;

namespace Machnet
{
    /// <summary>
    /// The process's attachment to the Machnet sidecar, and library-wide facts.
    /// Call <see cref="Init(string)"/> once before opening a <see cref="Channel"/>.
    /// </summary>
    public static unsafe class Sidecar
    {
        /// <summary>Largest message Machnet carries, in bytes (8 MiB).</summary>
        public const int MaxMessageLength = 8 * 1024 * 1024;

        /// <summary>The C ABI version this binding was generated from.</summary>
        public const int AbiVersion = (int)NativeMethods.MACHNET_ABI_VERSION;

        /// <summary>The native library's version, e.g. "machnet-rs 0.1.0 (C ABI 1)".</summary>
        public static string Version
        {
            get { return Interop.FromUtf8z(NativeMethods.machnet_version()); }
        }

        /// <summary>
        /// Attaches this process to the sidecar whose control socket is at
        /// <paramref name="socketPath"/> (null: <c>$MACHNET_SOCKET</c> or
        /// <c>/run/machnet/machnet.sock</c>). Channels opened earlier keep their attachment.
        /// </summary>
        /// <param name="socketPath">The sidecar's control socket, or null for the default.</param>
        /// <exception cref="ArgumentException"><paramref name="socketPath"/> is empty or contains NUL.</exception>
        /// <exception cref="MachnetException">The sidecar could not be reached.</exception>
        public static void Init(string socketPath = null)
        {
            if (socketPath == null)
            {
                if (NativeMethods.machnet_init() != 0)
                    throw MachnetException.FromErrno("machnet_init", Interop.LastErrno());
                return;
            }
            if (socketPath.Length == 0 || socketPath.IndexOf('\0') >= 0)
                throw new ArgumentException("socket path must be non-empty and contain no NUL", "socketPath");
            fixed (byte* p = Interop.Utf8z(socketPath))
            {
                if (NativeMethods.machnet_init_at(p) != 0)
                    throw MachnetException.FromErrno("machnet_init_at", Interop.LastErrno());
            }
        }
    }
}
