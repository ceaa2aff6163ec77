package io.github.machnetrs.machnet.test;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.github.machnetrs.machnet.Channel;
import io.github.machnetrs.machnet.ChannelClosedException;
import io.github.machnetrs.machnet.ConnectionRefusedException;
import io.github.machnetrs.machnet.ConnectionResetException;
import io.github.machnetrs.machnet.ErrorKind;
import io.github.machnetrs.machnet.Flow;
import io.github.machnetrs.machnet.FlowClosedException;
import io.github.machnetrs.machnet.FlowEvent;
import io.github.machnetrs.machnet.FlowEventKind;
import io.github.machnetrs.machnet.InvalidArgumentException;
import io.github.machnetrs.machnet.Machnet;
import io.github.machnetrs.machnet.MachnetException;
import io.github.machnetrs.machnet.MachnetInterruptedException;
import io.github.machnetrs.machnet.MachnetTimeoutException;
import io.github.machnetrs.machnet.Message;
import io.github.machnetrs.machnet.MessageTooLargeException;
import io.github.machnetrs.machnet.PortInUseException;
import io.github.machnetrs.machnet.SidecarUnreachableException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The binding's own behaviour against real sidecars (ci/jvm.sh): echoes, errors with their
 *  kinds, codes and errnos, timeouts, flow events, threads and the CompletableFuture calls. */
class ChannelTest {
    private static final int EMSGSIZE = 90, ENOENT = 2, ECONNREFUSED = 111, EINVAL = 22;
    /** Ports of the listeners these tests open on the server sidecar (clear of the apps'). */
    private static final int LISTEN_PORT = 2101;

    private Machnet machnet;
    private Channel ch;

    @BeforeEach
    void open() {
        machnet = Machnet.attach(Env.sock());
        ch = machnet.openChannel();
    }

    @AfterEach
    void close() {
        ch.close();
        machnet.close();
    }

    private Flow echoFlow() {
        return ch.connect(Env.peerIp(), Env.echoPort(), Env.LONG);
    }

    @Test
    void attachReportsTheSidecar() {
        assertEquals(Env.localIp(), machnet.getLocalIp());
        assertEquals(Env.sock(), machnet.getSocketPath());
        assertTrue(machnet.getEngines() >= 1);
        assertEquals(8 << 20, machnet.getMaxMessageLength());
        assertEquals(8 << 20, ch.getMaxMessageLength());
        assertEquals("0.1.0", Machnet.version());
        assertFalse(machnet.isSidecarGone());
        assertEquals("reset by the remote host", Machnet.describeCloseReason("reset"));
        assertNull(Machnet.describeCloseReason("no_such_reason"));
    }

    @Test
    void attachToAMissingSocketFails() {
        SidecarUnreachableException e = assertThrows(SidecarUnreachableException.class,
                () -> Machnet.attach(Env.get("MACHNET_TEST_DIR") + "/no-such.sock"));
        assertEquals("ERR_MACHNET_SIDECAR_UNREACHABLE", e.getCode());
        assertEquals(ErrorKind.SIDECAR_UNREACHABLE, e.getKind());
        assertEquals(ENOENT, e.getErrno());
        assertTrue(e.getMessage().contains("no-such.sock"), e.getMessage());
        assertThrows(InvalidArgumentException.class, () -> Machnet.attach(""));
    }

    @Test
    void echoesAreByteIdenticalOnTheirFlow() {
        Flow f = echoFlow();
        assertEquals(Env.peerIp(), f.getRemoteIp());
        assertEquals(Env.echoPort(), f.getRemotePort());
        assertEquals(Env.localIp(), f.getLocalIp());
        assertTrue(f.getHandle() > 0);
        assertEquals("open", ch.flowStatus(f));
        for (int size : new int[] {1, 64, 1400, 9000, 65537, 1 << 20, 8 << 20}) {
            byte[] msg = Env.payload(size);
            ch.send(f, msg);
            Message m = ch.recv(Env.LONG);
            assertEquals(f, m.getFlow());
            assertEquals(f.hashCode(), m.getFlow().hashCode());
            assertArrayEquals(msg, m.getData(), "echo of " + size + " bytes");
        }
        ch.closeFlow(f);
    }

    @Test
    void sendsSlicesAndByteBuffers() {
        Flow f = echoFlow();
        byte[] big = Env.payload(1000);
        ch.send(f, big, 10, 100);
        assertArrayEquals(java.util.Arrays.copyOfRange(big, 10, 110), ch.recv(Env.LONG).getData());
        ByteBuffer direct = ByteBuffer.allocateDirect(500);
        direct.put(Env.payload(500)).position(7).limit(300);
        ch.send(f, direct);
        assertEquals(7, direct.position(), "send does not move the position");
        assertArrayEquals(java.util.Arrays.copyOfRange(Env.payload(500), 7, 300), ch.recv(Env.LONG).getData());
        ByteBuffer heap = ByteBuffer.wrap(Env.payload(77));
        ch.send(f, heap);
        assertArrayEquals(Env.payload(77), ch.recv(Env.LONG).getData());
        assertTrue(ch.trySend(f, Env.payload(5)));
        assertArrayEquals(Env.payload(5), ch.recv(Env.LONG).getData());
        assertThrows(InvalidArgumentException.class, () -> ch.send(f, big, 990, 20));
    }

    @Test
    void pipelinedEchoesArriveInOrderExactlyOnce() {
        Flow f = echoFlow();
        int n = 2000;
        for (int k = 0; k < n; k++) {
            ch.send(f, ByteBuffer.allocate(64).order(ByteOrder.LITTLE_ENDIAN).putInt(0, k).array());
        }
        for (int k = 0; k < n; k++) {
            Message m = ch.recv(Env.LONG);
            assertEquals(k, ByteBuffer.wrap(m.getData()).order(ByteOrder.LITTLE_ENDIAN).getInt(0), "message " + k);
            assertEquals(64, m.getData().length);
        }
        assertNull(ch.tryRecv(Duration.ofMillis(100)), "no extra echo");
    }

    @Test
    void connectRefusedAndBadArguments() {
        ConnectionRefusedException e = assertThrows(ConnectionRefusedException.class,
                () -> ch.connect(Env.peerIp(), 2999, Env.LONG));
        assertEquals("ERR_MACHNET_CONNECTION_REFUSED", e.getCode());
        assertEquals(ECONNREFUSED, e.getErrno());
        assertEquals("refused", e.getReason());
        for (int port : new int[] {0, -1, 65536}) {
            InvalidArgumentException a = assertThrows(InvalidArgumentException.class, () -> ch.connect(Env.peerIp(), port));
            assertEquals("ERR_MACHNET_INVALID_ARGUMENT", a.getCode());
            assertEquals(EINVAL, a.getErrno());
            assertThrows(InvalidArgumentException.class, () -> ch.listen(port));
        }
        assertThrows(InvalidArgumentException.class, () -> ch.connect("not-an-ip", 1));
        assertThrows(InvalidArgumentException.class, () -> ch.recv(Duration.ofMillis(-1)));
        assertThrows(InvalidArgumentException.class, () -> machnet.openChannel(70000));
    }

    @Test
    void tooLongAndEmptyMessagesAreRefusedBeforeSending() {
        Flow f = echoFlow();
        MessageTooLargeException big = assertThrows(MessageTooLargeException.class,
                () -> ch.send(f, new byte[(8 << 20) + 1]));
        assertEquals("ERR_MACHNET_MESSAGE_TOO_LARGE", big.getCode());
        assertEquals(EMSGSIZE, big.getErrno());
        InvalidArgumentException empty = assertThrows(InvalidArgumentException.class, () -> ch.send(f, new byte[0]));
        assertEquals("ERR_MACHNET_INVALID_ARGUMENT", empty.getCode());
        ch.send(f, Env.payload(3));
        assertArrayEquals(Env.payload(3), ch.recv(Env.LONG).getData());
        assertNull(ch.tryRecv(Duration.ofMillis(100)), "nothing of the refused sends arrived");
    }

    @Test
    void timeouts() {
        long t0 = System.nanoTime();
        assertNull(ch.tryRecv(Duration.ofMillis(150)));
        assertTrue(System.nanoTime() - t0 >= 150_000_000L, "tryRecv returned early");
        assertNull(ch.tryRecv());
        t0 = System.nanoTime();
        MachnetTimeoutException e = assertThrows(MachnetTimeoutException.class, () -> ch.recv(Duration.ofMillis(150)));
        assertTrue(System.nanoTime() - t0 >= 150_000_000L, "recv returned early");
        assertEquals("ERR_MACHNET_TIMEOUT", e.getCode());
        assertNull(ch.nextEvent(Duration.ofMillis(50)));
        ExecutionException x = assertThrows(ExecutionException.class,
                () -> ch.recvAsync(Duration.ofMillis(100)).get(20, TimeUnit.SECONDS));
        assertInstanceOf(MachnetTimeoutException.class, x.getCause());
    }

    @Test
    void listenTwiceOnOneChannelIsPortInUse() {
        try (Machnet server = Machnet.attach(Env.peerSock()); Channel a = server.openChannel(); Channel b = server.openChannel()) {
            a.listen(LISTEN_PORT);
            PortInUseException e = assertThrows(PortInUseException.class, () -> a.listen(LISTEN_PORT));
            assertEquals("ERR_MACHNET_PORT_IN_USE", e.getCode());
            // Another channel of the same application joins the port's listen group
            // (docs/CHANNEL.md); another application would get PortInUse.
            b.listen(LISTEN_PORT);
            a.unlisten(LISTEN_PORT);
            b.unlisten(LISTEN_PORT);
            a.listen(LISTEN_PORT);
            a.unlisten(LISTEN_PORT);
        }
    }

    /** A listener on the server sidecar; the client connects and they exchange one message. */
    private static final class Pair implements AutoCloseable {
        final Machnet server;
        final Channel listener;
        final Flow client;
        final Flow accepted;

        Pair(Channel ch, int port) {
            server = Machnet.attach(Env.peerSock());
            listener = server.openChannel();
            listener.listen(port);
            client = ch.connect(Env.peerIp(), port, Env.LONG);
            ch.send(client, Env.payload(10));
            Message m = listener.recv(Env.LONG);
            assertArrayEquals(Env.payload(10), m.getData());
            accepted = m.getFlow();
            assertEquals(port, accepted.getLocalPort());
            assertEquals(client.getLocalPort(), accepted.getRemotePort());
        }

        @Override
        public void close() {
            listener.close();
            server.close();
        }
    }

    private static FlowEvent eventFor(Channel ch, Flow f, FlowEventKind kind) {
        List<FlowEvent> seen = new ArrayList<>();
        long deadline = System.nanoTime() + Env.LONG.toNanos();
        while (System.nanoTime() < deadline) {
            FlowEvent e = ch.nextEvent(Duration.ofMillis(100));
            if (e == null) continue;
            if (e.getFlow().equals(f) && e.getKind() == kind) return e;
            seen.add(e);
        }
        fail("no " + kind + " event for " + f + "; saw " + seen);
        return null;
    }

    @Test
    void abortedFlowGivesAResetEventThenSendsFail() {
        try (Pair p = new Pair(ch, LISTEN_PORT + 1)) {
            p.listener.abortFlow(p.accepted);
            FlowEvent e = eventFor(ch, p.client, FlowEventKind.RESET);
            assertEquals("reset", e.getReason());
            FlowClosedException x = assertThrows(FlowClosedException.class, () -> ch.send(p.client, Env.payload(1)));
            assertEquals("ERR_MACHNET_FLOW_CLOSED", x.getCode());
            assertInstanceOf(ConnectionResetException.class, x);
            assertEquals("closed", ch.flowStatus(p.client));
        }
    }

    @Test
    void gracefulCloseDeliversThenPeerClosed() {
        try (Pair p = new Pair(ch, LISTEN_PORT + 2)) {
            p.listener.send(p.accepted, Env.payload(4000));
            p.listener.closeFlow(p.accepted);
            Message m = ch.recv(Env.LONG);
            assertArrayEquals(Env.payload(4000), m.getData());
            eventFor(ch, p.client, FlowEventKind.PEER_CLOSED);
            FlowClosedException x = assertThrows(FlowClosedException.class, () -> {
                for (int i = 0; i < 500; i++) {
                    ch.send(p.client, Env.payload(1));
                    Thread.sleep(10);
                }
            });
            assertEquals("ERR_MACHNET_FLOW_CLOSED", x.getCode());
            assertFalse(x instanceof ConnectionResetException, "a graceful end is not a reset: " + x);
        }
    }

    @Test
    void closeWakesABlockedReceiverAndLaterCallsFail() throws Exception {
        CountDownLatch started = new CountDownLatch(1);
        AtomicReference<Throwable> got = new AtomicReference<>();
        Thread t = new Thread(() -> {
            started.countDown();
            try {
                ch.recv();
            } catch (Throwable e) {
                got.set(e);
            }
        });
        t.start();
        started.await();
        Thread.sleep(200); // let it block (the test holds either way: a recv after close fails too)
        ch.close();
        t.join(20_000);
        assertFalse(t.isAlive(), "recv still blocked after close");
        ChannelClosedException e = assertInstanceOf(ChannelClosedException.class, got.get());
        assertEquals("ERR_MACHNET_CHANNEL_CLOSED", e.getCode());
        assertTrue(ch.isClosed());
        assertThrows(ChannelClosedException.class, () -> ch.tryRecv());
        assertThrows(ChannelClosedException.class, () -> ch.connect(Env.peerIp(), Env.echoPort()));
        ch.close(); // twice: nothing
    }

    @Test
    void interruptWakesABlockedReceiver() throws Exception {
        CompletableFuture<Message> pending = ch.recvAsync();
        Thread.sleep(200);
        ch.interrupt();
        ExecutionException x = assertThrows(ExecutionException.class, () -> pending.get(20, TimeUnit.SECONDS));
        MachnetInterruptedException e = assertInstanceOf(MachnetInterruptedException.class, x.getCause());
        assertEquals("ERR_MACHNET_INTERRUPTED", e.getCode());
        // The channel still works.
        Flow f = echoFlow();
        ch.send(f, Env.payload(9));
        assertArrayEquals(Env.payload(9), ch.recv(Env.LONG).getData());
    }

    @Test
    void completableFutures() throws Exception {
        Flow f = ch.connectAsync(Env.peerIp(), Env.echoPort(), Env.LONG).get(20, TimeUnit.SECONDS);
        byte[] data = Env.payload(100_000);
        CompletableFuture<Message> echo = ch.sendAsync(f, data).thenCompose(v -> ch.recvAsync(Env.LONG));
        Message m = echo.get(20, TimeUnit.SECONDS);
        assertEquals(f, m.getFlow());
        assertArrayEquals(data, m.getData());
        ExecutionException x = assertThrows(ExecutionException.class,
                () -> ch.connectAsync(Env.peerIp(), 2998, Env.LONG).get(20, TimeUnit.SECONDS));
        assertInstanceOf(ConnectionRefusedException.class, x.getCause());
        assertNull(ch.nextEventAsync(Duration.ofMillis(50)).get(20, TimeUnit.SECONDS));
    }

    @Test
    void manyThreadsShareOneChannel() throws Exception {
        int threads = 4, each = 300;
        Flow[] flows = new Flow[threads];
        for (int i = 0; i < threads; i++) flows[i] = echoFlow();
        assertNotEquals(flows[0], flows[1]);
        Map<Flow, Integer> index = new HashMap<>();
        for (int i = 0; i < threads; i++) index.put(flows[i], i);
        List<Thread> senders = new ArrayList<>();
        AtomicReference<Throwable> failed = new AtomicReference<>();
        for (int i = 0; i < threads; i++) {
            int me = i;
            Thread t = new Thread(() -> {
                try {
                    for (int k = 0; k < each; k++) {
                        ch.send(flows[me], ByteBuffer.allocate(32).order(ByteOrder.LITTLE_ENDIAN).putInt(me).putInt(k).array());
                    }
                } catch (Throwable e) {
                    failed.set(e);
                }
            });
            senders.add(t);
            t.start();
        }
        // Two receivers split the echoes; every one arrives exactly once, in order per flow.
        int[] next = new int[threads];
        int[] total = new int[1];
        List<Thread> receivers = new ArrayList<>();
        for (int r = 0; r < 2; r++) {
            Thread t = new Thread(() -> {
                try {
                    while (true) {
                        Message m;
                        synchronized (next) {
                            if (total[0] == threads * each) return;
                            m = ch.recv(Env.LONG);
                            ByteBuffer b = ByteBuffer.wrap(m.getData()).order(ByteOrder.LITTLE_ENDIAN);
                            int who = b.getInt(), seq = b.getInt();
                            assertEquals(index.get(m.getFlow()).intValue(), who, "echo on the flow it was sent on");
                            assertEquals(next[who], seq, "flow " + who + " in order");
                            next[who]++;
                            total[0]++;
                        }
                    }
                } catch (Throwable e) {
                    failed.set(e);
                }
            });
            receivers.add(t);
            t.start();
        }
        for (Thread t : senders) t.join(60_000);
        for (Thread t : receivers) t.join(60_000);
        if (failed.get() != null) throw new AssertionError(failed.get());
        assertEquals(threads * each, total[0]);
        for (int i = 0; i < threads; i++) assertEquals(each, next[i], "flow " + i);
        assertNull(ch.tryRecv(Duration.ofMillis(100)), "no extra echo");
    }

    @Test
    void everyErrorKindHasItsCode() {
        for (ErrorKind k : ErrorKind.values()) {
            assertTrue(k.getCode().startsWith("ERR_MACHNET_"), k.toString());
        }
        assertEquals("ERR_MACHNET_PORT_IN_USE", ErrorKind.ADDRESS_IN_USE.getCode());
        assertNotNull(MachnetException.class);
    }
}
