using System;
using System.Runtime.InteropServices;
using System.Text;
using Machnet.Native;

namespace Machnet
{
    /// <summary>Linux errno values libmachnet reports.</summary>
    internal static class LinuxErrno
    {
        internal const int EPERM = 1;
        internal const int ENOENT = 2;
        internal const int EINTR = 4;
        internal const int EIO = 5;
        internal const int EBADF = 9;
        internal const int EAGAIN = 11;
        internal const int EACCES = 13;
        internal const int EBUSY = 16;
        internal const int EINVAL = 22;
        internal const int EPIPE = 32;
        internal const int EPROTO = 71;
        internal const int EMSGSIZE = 90;
        internal const int EADDRINUSE = 98;
        internal const int ECONNABORTED = 103;
        internal const int ECONNRESET = 104;
        internal const int ENOTCONN = 107;
        internal const int ETIMEDOUT = 110;
        internal const int ECONNREFUSED = 111;
    }

    /// <summary>Marshalling helpers around the generated <see cref="NativeMethods"/>.</summary>
    internal static unsafe class Interop
    {
        /// <summary>A NUL-terminated UTF-8 copy of <paramref name="s"/>.</summary>
        internal static byte[] Utf8z(string s)
        {
            var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
            Encoding.UTF8.GetBytes(s, 0, s.Length, bytes, 0);
            return bytes;
        }

        /// <summary>Decodes a NUL-terminated UTF-8 string owned by libmachnet.</summary>
        internal static string FromUtf8z(byte* p)
        {
            if (p == null)
                return string.Empty;
            int n = 0;
            while (p[n] != 0)
                n++;
            return Encoding.UTF8.GetString(p, n);
        }

        internal static string LastError() { return FromUtf8z(NativeMethods.machnet_last_error()); }

        /// <summary>The code name of this thread's last libmachnet failure ("" if none).</summary>
        internal static string LastErrorCode() { return FromUtf8z(NativeMethods.machnet_last_error_code()); }

        internal static string StrError(int errno) { return FromUtf8z(NativeMethods.machnet_strerror(errno)); }

        /// <summary>errno of the last P/Invoke on this thread (every import has SetLastError = true).</summary>
        internal static int LastErrno() { return Marshal.GetLastWin32Error(); }

        /// <summary>A timeout for libmachnet: milliseconds rounded up, -1 for infinite.</summary>
        internal static int TimeoutMs(TimeSpan timeout, string paramName)
        {
            if (timeout == System.Threading.Timeout.InfiniteTimeSpan)
                return -1;
            if (timeout < TimeSpan.Zero)
                throw new ArgumentOutOfRangeException(paramName, "timeout must be non-negative or Timeout.InfiniteTimeSpan");
            double ms = Math.Ceiling(timeout.TotalMilliseconds);
            return ms >= int.MaxValue ? -1 : (int)ms;
        }
    }
}
