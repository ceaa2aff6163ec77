// machnet-echo-cs: the C# twin of `machnet-echo client` (and of go/cmd/machnet-echo-go). It keeps
// WINDOW messages outstanding on one flow to an echo server (`machnet-echo server`), verifies
// every echo byte for byte and reports the rate and RTT percentiles (same JSON fields as the
// Rust tool, mode "machnet-cs").
//
//   mono machnet-echo-cs.exe --socket /run/machnet/machnet.sock --remote 10.0.0.1 --port 888 \
//       --size 64 --window 1 --duration 10 --warmup 1 [--json]
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using Machnet;

internal static class MachnetEcho
{
    private static int Main(string[] args)
    {
        string socket = null, remote = null;
        ushort port = 888;
        int size = 64, window = 1;
        double duration = 10, warmup = 1;
        bool json = false;
        try
        {
            for (int i = 0; i < args.Length; i++)
            {
                Func<string> val = () =>
                {
                    if (i + 1 >= args.Length)
                        throw new ArgumentException(args[i] + " needs a value");
                    return args[++i];
                };
                var inv = CultureInfo.InvariantCulture;
                switch (args[i])
                {
                    case "--socket": socket = val(); break;
                    case "--remote": remote = val(); break;
                    case "--port": port = ushort.Parse(val(), inv); break;
                    case "--size": size = int.Parse(val(), inv); break;
                    case "--window": window = int.Parse(val(), inv); break;
                    case "--duration": duration = double.Parse(val(), inv); break;
                    case "--warmup": warmup = double.Parse(val(), inv); break;
                    case "--json": json = true; break;
                    default: throw new ArgumentException("unknown option " + args[i]);
                }
            }
            if (remote == null || port == 0)
                throw new ArgumentException("--remote and --port are required");
            if (size < 1 || size > Sidecar.MaxMessageLength || window < 1 || duration < 0 || warmup < 0)
                throw new ArgumentException("--size must be 1.." + Sidecar.MaxMessageLength + ", --window at least 1, durations non-negative");
            return Run(socket, remote, port, size, window, duration, warmup, json);
        }
        catch (Exception e)
        {
            Console.Error.WriteLine("machnet-echo-cs: " + e.Message);
            return 1;
        }
    }

    private static void Stamp(byte[] buf, byte[] template, ulong seq)
    {
        Buffer.BlockCopy(template, 0, buf, 0, template.Length);
        for (int i = 0; i < 8 && i < buf.Length; i++)
            buf[i] = (byte)(seq >> (8 * i));
    }

    private static int Run(string socket, string remote, ushort port, int size, int window, double duration, double warmup, bool json)
    {
        Sidecar.Init(socket);
        using (var ch = new Channel())
        {
            Flow flow = ch.Connect("0.0.0.0", remote, port, TimeSpan.FromSeconds(10));
            var template = new byte[size];
            ulong x = 0x9e3779b97f4a7c15;
            for (int i = 0; i < size; i++)
            {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                template[i] = (byte)x;
            }
            byte[] sbuf = new byte[size], want = new byte[size], rbuf = new byte[size];
            var outstanding = new Queue<KeyValuePair<ulong, long>>();
            ulong next = 0;
            Action send = () =>
            {
                Stamp(sbuf, template, next);
                ch.Send(flow, sbuf);
                outstanding.Enqueue(new KeyValuePair<ulong, long>(next, Stopwatch.GetTimestamp()));
                next++;
            };
            double tick = Stopwatch.Frequency;
            long start = Stopwatch.GetTimestamp();
            long warmEnd = start + (long)(warmup * tick);
            long end = warmEnd + (long)(duration * tick);
            for (int i = 0; i < window; i++)
                send();
            var rtts = new List<long>(1 << 20);
            long messages = 0, mismatches = 0;
            long now = Stopwatch.GetTimestamp();
            var seg = new ArraySegment<byte>(rbuf);
            while (now < end)
            {
                int n;
                Flow from;
                // An echo missing for 5 s past the end fails the run.
                var left = TimeSpan.FromSeconds((end - now) / tick + 5);
                if (!ch.TryReceive(seg, left, out n, out from))
                    throw new TimeoutException("no echo (" + outstanding.Count + " outstanding)");
                now = Stopwatch.GetTimestamp();
                var s = outstanding.Dequeue();
                Stamp(want, template, s.Key);
                bool same = n == size;
                for (int i = 0; same && i < n; i++)
                    same = rbuf[i] == want[i];
                if (!same)
                    mismatches++;
                if (now >= warmEnd)
                {
                    messages++;
                    rtts.Add(now - s.Value);
                }
                if (now < end)
                    send();
            }
            double elapsed = (now - warmEnd) / tick;
            while (outstanding.Count > 0)
            {
                int n;
                Flow from;
                if (!ch.TryReceive(seg, TimeSpan.FromSeconds(2), out n, out from))
                    break;
                outstanding.Dequeue();
            }
            try { ch.CloseFlow(flow); } catch (MachnetException) { }
            Report(size, window, elapsed, messages, mismatches, rtts, tick, json);
            if (mismatches > 0)
            {
                Console.Error.WriteLine("machnet-echo-cs: " + mismatches + " echoes differed from what was sent");
                return 1;
            }
            return 0;
        }
    }

    private static void Report(int size, int window, double elapsed, long messages, long mismatches, List<long> rtts, double tick, bool json)
    {
        rtts.Sort();
        Func<double, double> us = q =>
        {
            if (rtts.Count == 0)
                return 0;
            int i = Math.Min((int)(q * rtts.Count), rtts.Count - 1);
            return rtts[i] * 1e6 / tick;
        };
        double sum = 0;
        foreach (long r in rtts)
            sum += r;
        double mean = rtts.Count > 0 ? sum * 1e6 / tick / rtts.Count : 0;
        double rate = elapsed > 0 ? messages / elapsed : 0;
        var c = CultureInfo.InvariantCulture;
        if (json)
        {
            Console.WriteLine(string.Format(c,
                "{{\"mode\":\"machnet-cs\",\"size\":{0},\"window\":{1},\"flows\":1,\"duration_s\":{2},\"messages\":{3}," +
                "\"msgs_per_sec\":{4},\"gbit_per_sec\":{5},\"mismatches\":{6},\"lost\":0," +
                "\"rtt_us\":{{\"p50\":{7},\"p99\":{8},\"p999\":{9},\"max\":{10},\"mean\":{11}}}}}",
                size, window, elapsed, messages, rate, rate * size * 8 / 1e9, mismatches,
                us(0.5), us(0.99), us(0.999), us(1), mean));
            return;
        }
        Console.WriteLine(string.Format(c, "machnet-cs: {0} B messages, window {1}, 1 flow, {2:F2} s measured", size, window, elapsed));
        Console.WriteLine(string.Format(c, "  {0} round trips: {1:F0} msg/s, {2:F3} Gbit/s payload each way", messages, rate, rate * size * 8 / 1e9));
        Console.WriteLine(string.Format(c, "  RTT us: p50 {0:F1}  p99 {1:F1}  p99.9 {2:F1}  max {3:F1}  mean {4:F1}", us(0.5), us(0.99), us(0.999), us(1), mean));
        Console.WriteLine("  mismatched echoes: " + mismatches);
    }
}
