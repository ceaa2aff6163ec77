package io.github.machnetrs.machnet.test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.github.machnetrs.machnet.Channel;
import io.github.machnetrs.machnet.ConnectionRefusedException;
import io.github.machnetrs.machnet.FlowClosedException;
import io.github.machnetrs.machnet.Flow;
import io.github.machnetrs.machnet.FlowEvent;
import io.github.machnetrs.machnet.FlowEventKind;
import io.github.machnetrs.machnet.InvalidArgumentException;
import io.github.machnetrs.machnet.Machnet;
import io.github.machnetrs.machnet.MachnetException;
import io.github.machnetrs.machnet.MachnetTimeoutException;
import io.github.machnetrs.machnet.Message;
import io.github.machnetrs.machnet.MessageTooLargeException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.TestFactory;

/**
 * The cross-language conformance cases (conformance/cases.json, described in
 * conformance/README.md): one dynamic test per case, in the file's order, against the apps
 * ci/jvm.sh starts (MACHNET_CONFORMANCE_SERVER_IP, _ECHO_PORT, _KV_PORT, _RAFT_PORT; client
 * sidecar MACHNET_TEST_SOCK, server sidecar MACHNET_TEST_PEER_SOCK).
 *
 * <p>Error names as this binding reports them; each is a {@link MachnetException} whose
 * {@code getCode()} is the README's code name:
 * <pre>
 *   refused           ConnectionRefusedException   ERR_MACHNET_CONNECTION_REFUSED
 *   invalid_argument  InvalidArgumentException     ERR_MACHNET_INVALID_ARGUMENT
 *   too_large         MessageTooLargeException     ERR_MACHNET_MESSAGE_TOO_LARGE
 *   reset             FlowClosedException          ERR_MACHNET_FLOW_CLOSED (the flow is gone: the
 *                     send fails because it is no longer open; reason "reset" when the
 *                     channel still knows it, which makes it a ConnectionResetException, a
 *                     FlowClosedException subclass)
 *   closed            FlowClosedException          ERR_MACHNET_FLOW_CLOSED (reason "graceful")
 * </pre>
 * Events (a case's "event") are checked with {@link Channel#nextEvent}: {@code reset} is
 * {@link FlowEventKind#RESET}, {@code peer_closed} is {@link FlowEventKind#PEER_CLOSED}.
 */
class ConformanceTest {
    private static final Map<String, String> CODES = Map.of(
            "refused", "ERR_MACHNET_CONNECTION_REFUSED",
            "invalid_argument", "ERR_MACHNET_INVALID_ARGUMENT",
            "too_large", "ERR_MACHNET_MESSAGE_TOO_LARGE",
            "reset", "ERR_MACHNET_FLOW_CLOSED",
            "closed", "ERR_MACHNET_FLOW_CLOSED");

    private static final Map<String, Integer> STATUS = Map.of(
            "ok", 0, "not_found", 1, "bad_request", 2, "server_error", 3);

    static Path casesPath() {
        String p = System.getenv("MACHNET_CONFORMANCE_CASES");
        if (p != null && !p.isEmpty()) return Paths.get(p);
        for (Path d = Paths.get("").toAbsolutePath(); d != null; d = d.getParent()) {
            Path c = d.resolve("conformance").resolve("cases.json");
            if (Files.exists(c)) return c;
        }
        return Paths.get("conformance", "cases.json");
    }

    @SuppressWarnings("unchecked")
    @TestFactory
    Stream<DynamicTest> conformance() throws IOException {
        Map<String, Object> file = (Map<String, Object>) MiniJson.parse(
                new String(Files.readAllBytes(casesPath()), StandardCharsets.UTF_8));
        assertEquals(1L, file.get("version"), "cases.json version");
        List<Object> cases = (List<Object>) file.get("cases");
        assertTrue(cases != null && !cases.isEmpty(), "cases.json has cases");
        List<DynamicTest> tests = new ArrayList<>();
        for (int i = 0; i < cases.size(); i++) {
            Map<String, Object> c = (Map<String, Object>) cases.get(i);
            String name = String.format("%02d_%s", i + 1, c.get("name"));
            tests.add(DynamicTest.dynamicTest(name, () -> new Runner(c).run()));
        }
        return tests.stream();
    }

    /** One case on a fresh channel of the client sidecar; its flows are closed at the end. */
    private static final class Runner {
        private final Map<String, Object> c;
        private final String name;
        private final List<Flow> flows = new ArrayList<>();
        private Channel ch;

        Runner(Map<String, Object> c) {
            this.c = c;
            this.name = (String) c.get("name");
        }

        private int num(String k) {
            Object v = c.get(k);
            if (!(v instanceof Long)) fail("case " + name + ": field " + k + " missing");
            return ((Long) v).intValue();
        }

        private String str(String k) { return (String) c.get(k); }

        @SuppressWarnings("unchecked")
        private int[] ints(String k) {
            return ((List<Object>) c.get(k)).stream().mapToInt(o -> ((Long) o).intValue()).toArray();
        }

        void run() throws Exception {
            try (Machnet m = Machnet.attach(Env.sock())) {
                ch = m.openChannel();
                try {
                    dispatch();
                } finally {
                    for (Flow f : flows) {
                        try { ch.closeFlow(f); } catch (MachnetException ignored) { /* already gone */ }
                    }
                    ch.close();
                }
            }
        }

        private void dispatch() throws Exception {
            String what = str("do");
            switch (what) {
                case "echo": echo(); break;
                case "echo_pipelined": echoPipelined(); break;
                case "echo_flows": echoFlows(); break;
                case "recv_timeout": recvTimeout(); break;
                case "connect_error": connectError(); break;
                case "send_error": sendError(); break;
                case "peer_goes_away": peerGoesAway(); break;
                case "peer_closes_after_sending": peerClosesAfterSending(); break;
                case "kv": kv(); break;
                case "kv_pipelined": kvPipelined(); break;
                default: fail("case " + name + ": unknown do \"" + what + "\"");
            }
        }

        private String serverIp() { return Env.get("MACHNET_CONFORMANCE_SERVER_IP"); }

        private int portOf() {
            String app = str("app");
            if ("echo".equals(app)) return Integer.parseInt(Env.get("MACHNET_CONFORMANCE_ECHO_PORT"));
            if ("kv".equals(app)) return Integer.parseInt(Env.get("MACHNET_CONFORMANCE_KV_PORT"));
            if ("raft".equals(app)) return Integer.parseInt(Env.get("MACHNET_CONFORMANCE_RAFT_PORT"));
            fail("case " + name + ": unknown app " + app);
            return 0;
        }

        private Flow connect(int port) {
            Flow f = ch.connect(serverIp(), port, Env.LONG);
            flows.add(f);
            return f;
        }

        private Message recv(String what) {
            Message m = ch.tryRecv(Env.LONG);
            if (m == null) fail(what + ": nothing received within " + Env.LONG);
            return m;
        }

        private static void same(String what, byte[] want, byte[] got) {
            if (want.length != got.length) {
                fail(what + ": " + got.length + " bytes received, " + want.length + " sent");
            }
            for (int i = 0; i < want.length; i++) {
                if (want[i] != got[i]) {
                    fail(what + ": byte " + i + " differs: sent " + want[i] + ", received " + got[i]);
                }
            }
        }

        private static void wantError(String what, String errName, Throwable e) {
            if (e == null) fail(what + " succeeded; want " + errName);
            boolean ok;
            switch (errName) {
                case "refused": ok = e instanceof ConnectionRefusedException; break;
                case "invalid_argument": ok = e instanceof InvalidArgumentException; break;
                case "too_large": ok = e instanceof MessageTooLargeException; break;
                case "reset":
                case "closed": ok = e instanceof FlowClosedException; break;
                default: fail(what + ": unknown error name " + errName); return;
            }
            if (!ok) fail(what + " failed with " + e + "; want " + errName);
            assertEquals(CODES.get(errName), ((MachnetException) e).getCode(), what + ": code of " + e);
            if ("closed".equals(errName)) {
                // Never a reset: the peer closed gracefully.
                assertEquals("graceful", ((MachnetException) e).getReason(), what + ": reason of " + e);
            }
        }

        private static Throwable catching(Runnable r) {
            try {
                r.run();
            } catch (RuntimeException e) {
                return e;
            }
            return null;
        }

        private void echo() {
            Flow f = connect(portOf());
            for (int size : ints("sizes")) {
                byte[] msg = Env.payload(size);
                ch.send(f, msg);
                Message got = recv("size " + size);
                assertEquals(f, got.getFlow(), "size " + size + ": the echo arrives on the flow it was sent on");
                same("size " + size, msg, got.getData());
            }
        }

        private void echoPipelined() {
            Flow f = connect(portOf());
            int count = num("count"), size = num("size");
            byte[][] msgs = new byte[count][];
            for (int k = 0; k < count; k++) {
                msgs[k] = Env.payload(size);
                ByteBuffer.wrap(msgs[k]).order(ByteOrder.LITTLE_ENDIAN).putInt(0, k);
                ch.send(f, msgs[k]);
            }
            for (int k = 0; k < count; k++) {
                Message got = recv("message " + k);
                assertEquals(f, got.getFlow(), "message " + k + ": on the flow it was sent on");
                byte[] d = got.getData();
                if (d.length >= 4) {
                    int seq = ByteBuffer.wrap(d).order(ByteOrder.LITTLE_ENDIAN).getInt(0);
                    if (seq != k) fail("message " + k + ": got message " + seq + " (out of order)");
                }
                same("message " + k, msgs[k], d);
            }
        }

        private void echoFlows() {
            int port = portOf();
            Flow[] fs = new Flow[num("flows")];
            for (int i = 0; i < fs.length; i++) fs[i] = connect(port);
            byte[] msg = Env.payload(num("size"));
            for (int round = 0; round < num("count"); round++) {
                for (Flow f : fs) ch.send(f, msg);
                boolean[] seen = new boolean[fs.length];
                for (int k = 0; k < fs.length; k++) {
                    Message got = recv("round " + round + " message " + k);
                    int idx = Arrays.asList(fs).indexOf(got.getFlow());
                    if (idx < 0) fail("round " + round + ": a message arrived on " + got.getFlow() + ", none of the flows");
                    if (seen[idx]) fail("round " + round + ": two messages on flow " + idx);
                    seen[idx] = true;
                    same("round " + round + " flow " + idx, msg, got.getData());
                }
            }
        }

        private void recvTimeout() {
            Duration want = Duration.ofMillis(num("timeout_ms"));
            long t0 = System.nanoTime();
            Message m = ch.tryRecv(want);
            long took = System.nanoTime() - t0;
            assertNull(m, "tryRecv(" + want + ") returned a message");
            assertTrue(took >= want.toNanos(), "tryRecv returned early: after " + took + " ns");
            // recv(timeout) throws the binding's timeout error instead.
            long t1 = System.nanoTime();
            MachnetTimeoutException e = assertThrows(MachnetTimeoutException.class, () -> ch.recv(want));
            took = System.nanoTime() - t1;
            assertEquals("ERR_MACHNET_TIMEOUT", e.getCode());
            assertTrue(took >= want.toNanos(), "recv returned early: after " + took + " ns");
        }

        private void connectError() {
            int port = num("port");
            Throwable e = catching(() -> flows.add(ch.connect(serverIp(), port, Env.LONG)));
            wantError("connect to port " + port, str("error"), e);
        }

        private void sendError() {
            Flow f = connect(portOf());
            int size = num("size");
            Throwable e = catching(() -> ch.send(f, new byte[size]));
            wantError("a send of " + size + " bytes", str("error"), e);
            byte[] one = Env.payload(1);
            ch.send(f, one);
            same("1-byte echo after the failed send (nothing of the failed send may arrive)", one,
                    recv("1-byte echo").getData());
        }

        /** A channel of the server sidecar listening on the case's port. */
        private Channel listener(Machnet server) {
            Channel l = server.openChannel();
            try {
                l.listen(num("port"));
            } catch (RuntimeException e) {
                l.close();
                throw e;
            }
            return l;
        }

        private void peerGoesAway() {
            Flow f;
            try (Machnet server = Machnet.attach(Env.peerSock())) {
                Channel l = listener(server);
                try {
                    f = connect(num("port"));
                    byte[] ask = Env.payload(100);
                    ch.send(f, ask);
                    Message atServer = l.tryRecv(Env.LONG);
                    if (atServer == null) fail("the listener received nothing");
                    same("message at the listener", ask, atServer.getData());
                    byte[] answer = Env.payload(33);
                    l.send(atServer.getFlow(), answer);
                    same("the listener's answer", answer, recv("the listener's answer").getData());
                    l.abort();
                } finally {
                    l.close();
                }
            }
            flowEnds(f);
        }

        private void peerClosesAfterSending() {
            Flow f;
            int[] sizes = ints("sizes");
            try (Machnet server = Machnet.attach(Env.peerSock())) {
                Channel l = listener(server);
                try {
                    f = connect(num("port"));
                    byte[] ask = "ping".getBytes(StandardCharsets.US_ASCII);
                    ch.send(f, ask);
                    Message atServer = l.tryRecv(Env.LONG);
                    if (atServer == null) fail("the listener received nothing");
                    same("message at the listener", ask, atServer.getData());
                    for (int size : sizes) l.send(atServer.getFlow(), Env.payload(size));
                } finally {
                    l.close(); // graceful, right after the sends
                }
            }
            for (int size : sizes) {
                String what = "the listener's message of " + size + " bytes";
                Message got = recv(what);
                assertEquals(f, got.getFlow(), what + ": on the flow");
                same(what, Env.payload(size), got.getData());
            }
            flowEnds(f);
        }

        /** After the peer went away: no message arrives on f, the case's event comes, and a
         *  send fails with the case's error. */
        private void flowEnds(Flow f) {
            Message[] late = new Message[1];
            Throwable re = catching(() -> late[0] = ch.tryRecv(Duration.ofMillis(500)));
            if (late[0] != null) fail("a " + late[0].getData().length + "-byte message arrived after the peer went away");
            if (re != null) wantError("receive after the peer went away", str("error"), re);
            wantEvent(f);
            long deadline = System.nanoTime() + Env.LONG.toNanos();
            while (true) {
                Throwable e = catching(() -> ch.send(f, new byte[] {1}));
                if (e != null) {
                    wantError("send after the peer went away", str("error"), e);
                    return;
                }
                if (System.nanoTime() > deadline) fail("sends still succeed " + Env.LONG + " after the peer went away");
                try { Thread.sleep(20); } catch (InterruptedException x) { throw new RuntimeException(x); }
            }
        }

        private void wantEvent(Flow f) {
            String ev = str("event");
            if (ev == null || ev.isEmpty()) return;
            FlowEventKind want;
            switch (ev) {
                case "peer_closed": want = FlowEventKind.PEER_CLOSED; break;
                case "reset": want = FlowEventKind.RESET; break;
                case "timed_out": want = FlowEventKind.TIMED_OUT; break;
                case "refused": want = FlowEventKind.REFUSED; break;
                case "closed": want = FlowEventKind.CLOSED; break;
                case "request_failed": want = FlowEventKind.REQUEST_FAILED; break;
                default: fail("unknown event name \"" + ev + "\" in case " + name); return;
            }
            List<String> seen = new ArrayList<>();
            long deadline = System.nanoTime() + Env.LONG.toNanos();
            while (System.nanoTime() < deadline) {
                FlowEvent e = ch.nextEvent(Duration.ofMillis(50));
                if (e != null) {
                    if (e.getFlow().equals(f) && e.getKind() == want) return;
                    seen.add(e.toString());
                    continue;
                }
                Message late = ch.tryRecv();
                if (late != null) fail("a " + late.getData().length + "-byte message arrived after the peer went away");
            }
            fail("no " + ev + " event for " + f + " (events seen: " + seen + ")");
        }

        private static byte[] hex(String s) {
            byte[] b = new byte[s.length() / 2];
            for (int i = 0; i < b.length; i++) b[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
            return b;
        }

        private static String toHex(byte[] b, int from) {
            StringBuilder sb = new StringBuilder();
            for (int i = from; i < b.length; i++) sb.append(String.format("%02x", b[i] & 0xff));
            return sb.toString();
        }

        private static void kvResponse(String what, String status, long id, String body, String bodyContains, byte[] got) {
            Integer want = STATUS.get(status);
            if (want == null) fail(what + ": unknown status " + status);
            if (got.length < 5) fail(what + ": response of " + got.length + " bytes (" + toHex(got, 0) + "), shorter than its header");
            String text = new String(got, 5, got.length - 5, StandardCharsets.UTF_8);
            if (got[0] != want) fail(what + ": status " + got[0] + ", want " + want + " (" + status + "); body \"" + text + "\"");
            long gotId = ByteBuffer.wrap(got, 1, 4).order(ByteOrder.LITTLE_ENDIAN).getInt() & 0xffffffffL;
            if (gotId != id) fail(what + ": id " + gotId + ", want " + id);
            if (body != null && !toHex(got, 5).equals(body.toLowerCase())) fail(what + ": body " + toHex(got, 5) + ", want " + body);
            if (bodyContains != null && !text.contains(bodyContains)) fail(what + ": body \"" + text + "\" does not contain \"" + bodyContains + "\"");
        }

        @SuppressWarnings("unchecked")
        private void kv() {
            Flow f = connect(portOf());
            List<Object> steps = (List<Object>) c.get("steps");
            for (int i = 0; i < steps.size(); i++) {
                Map<String, Object> s = (Map<String, Object>) steps.get(i);
                String what = "step " + i + " (request " + s.get("request") + ")";
                ch.send(f, hex((String) s.get("request")));
                kvResponse(what, (String) s.get("status"), (Long) s.get("id"), (String) s.get("body"),
                        (String) s.get("body_contains"), recv(what).getData());
            }
        }

        private static byte[] kvRequest(byte op, int id, byte[] key, byte[] value) {
            ByteBuffer m = ByteBuffer.allocate(7 + key.length + value.length).order(ByteOrder.LITTLE_ENDIAN);
            m.put(op).putInt(id).putShort((short) key.length).put(key).put(value);
            return m.array();
        }

        private void kvPipelined() {
            Flow f = connect(portOf());
            int count = num("count");
            String prefix = str("key_prefix");
            for (int phase = 0; phase < 2; phase++) {
                boolean set = phase == 0;
                for (int i = 0; i < count; i++) {
                    byte[] key = (prefix + i).getBytes(StandardCharsets.UTF_8);
                    byte[] value = set ? ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt(i).array() : new byte[0];
                    ch.send(f, kvRequest(set ? (byte) 2 : (byte) 1, i, key, value));
                }
                for (int i = 0; i < count; i++) {
                    String what = (set ? "SET " : "GET ") + i;
                    String body = set ? "" : toHex(ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt(i).array(), 0);
                    kvResponse(what, "ok", i, body, null, recv(what).getData());
                }
            }
        }
    }
}
