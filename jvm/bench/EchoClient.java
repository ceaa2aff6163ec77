// The JVM echo client of ci/bench-languages.sh and ci/jvm.sh: the same load and report as
// `machnet-echo client` (examples/echo), through the JVM binding's blocking calls.
//
//   java -cp <machnet jar, kotlin-stdlib, jna> EchoClient --socket S --remote IP --port P
//       --size 64 --window 1 --duration 10 --warmup 1 [--json]
//
// One flow, `window` messages outstanding. Every echo is checked byte for byte against what was
// sent (a sequence number in the first 8 bytes, a fixed pattern after it); a differing echo is
// counted in "mismatches" and makes the exit status 1. Prints one JSON line with --json (the
// fields ci/bench-languages.sh and print_echo_pair read: messages, mismatches, msgs_per_sec,
// rtt_us.p50/p99/p999), else a human summary.
import io.github.machnetrs.machnet.Channel;
import io.github.machnetrs.machnet.Flow;
import io.github.machnetrs.machnet.Machnet;
import io.github.machnetrs.machnet.Message;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.Locale;

public final class EchoClient {
    public static void main(String[] args) throws Exception {
        String socket = null, remote = null;
        int port = 0, size = 64, window = 1;
        double duration = 10, warmup = 1;
        boolean json = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--socket": socket = args[++i]; break;
                case "--remote": remote = args[++i]; break;
                case "--port": port = Integer.parseInt(args[++i]); break;
                case "--size": size = Integer.parseInt(args[++i]); break;
                case "--window": window = Integer.parseInt(args[++i]); break;
                case "--duration": duration = Double.parseDouble(args[++i]); break;
                case "--warmup": warmup = Double.parseDouble(args[++i]); break;
                case "--json": json = true; break;
                default:
                    System.err.println("unknown argument " + args[i]);
                    System.exit(2);
            }
        }
        if (remote == null || port == 0 || size < 8 || window < 1) {
            System.err.println("usage: EchoClient [--socket S] --remote IP --port P [--size N>=8] [--window W]"
                    + " [--duration S] [--warmup S] [--json]");
            System.exit(2);
        }
        try (Machnet machnet = socket == null ? Machnet.attach() : Machnet.attach(socket);
             Channel ch = machnet.openChannel()) {
            Flow flow = ch.connect(remote, port, Duration.ofSeconds(10));
            byte[] send = pattern(size), want = pattern(size);
            ArrayDeque<long[]> outstanding = new ArrayDeque<>(); // {seq, sent at}
            long seq = 0, messages = 0, mismatches = 0;
            long[] rtts = new long[1 << 16];
            long start = System.nanoTime();
            long warmEnd = start + (long) (warmup * 1e9), end = warmEnd + (long) (duration * 1e9);
            for (int w = 0; w < window; w++) {
                stamp(send, seq);
                outstanding.add(new long[] {seq++, System.nanoTime()});
                ch.send(flow, send);
            }
            long now = System.nanoTime();
            while (now < end || !outstanding.isEmpty()) {
                Message m = ch.recv(Duration.ofSeconds(5));
                now = System.nanoTime();
                long[] o = outstanding.poll();
                if (o == null) { // an echo nobody waits for
                    mismatches++;
                    continue;
                }
                stamp(want, o[0]);
                if (!m.getFlow().equals(flow) || !Arrays.equals(m.getData(), want)) {
                    mismatches++;
                }
                if (now >= warmEnd && now < end) {
                    if (messages == rtts.length) rtts = Arrays.copyOf(rtts, rtts.length * 2);
                    rtts[(int) messages++] = now - o[1];
                }
                if (now < end) {
                    stamp(send, seq);
                    outstanding.add(new long[] {seq++, System.nanoTime()});
                    ch.send(flow, send);
                }
            }
            ch.closeFlow(flow);
            long[] r = Arrays.copyOf(rtts, (int) messages);
            Arrays.sort(r);
            double secs = Math.max(1e-9, (Math.min(now, end) - warmEnd) / 1e9);
            double rate = messages / secs;
            double mean = 0;
            for (long v : r) mean += v;
            mean = r.length == 0 ? 0 : mean / r.length / 1e3;
            String report = String.format(Locale.ROOT,
                    "{\"mode\":\"machnet-jvm\",\"size\":%d,\"window\":%d,\"flows\":1,\"duration_s\":%.3f,"
                            + "\"messages\":%d,\"msgs_per_sec\":%.1f,\"mismatches\":%d,"
                            + "\"rtt_us\":{\"p50\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,\"mean\":%.3f}}",
                    size, window, secs, messages, rate, mismatches,
                    q(r, 0.5), q(r, 0.99), q(r, 0.999), r.length == 0 ? 0 : r[r.length - 1] / 1e3, mean);
            if (json) {
                System.out.println(report);
            } else {
                System.out.printf(Locale.ROOT, "machnet-jvm: %d B, window %d: %d round trips, %.0f msg/s,"
                        + " RTT us p50 %.1f p99 %.1f p99.9 %.1f; mismatched echoes: %d%n",
                        size, window, messages, rate, q(r, 0.5), q(r, 0.99), q(r, 0.999), mismatches);
            }
            if (mismatches > 0 || messages == 0) System.exit(1);
        }
    }

    /** The value at quantile q of sorted nanoseconds, in microseconds. */
    private static double q(long[] sorted, double q) {
        if (sorted.length == 0) return 0;
        int i = (int) Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
        return sorted[i] / 1e3;
    }

    private static byte[] pattern(int size) {
        byte[] b = new byte[size];
        for (int i = 0; i < size; i++) b[i] = (byte) (i * 31 + 7);
        return b;
    }

    /** Writes seq into the first 8 bytes (little endian). */
    private static void stamp(byte[] b, long seq) {
        for (int i = 0; i < 8; i++) b[i] = (byte) (seq >>> (8 * i));
    }
}
