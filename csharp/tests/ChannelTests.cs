// NUnit 2.6 tests of the Machnet C# binding against real sidecars and `machnet-echo server`.
// ci/csharp.sh starts them and sets MACHNET_TEST_* (see Env below).
using System;
using System.Runtime.CompilerServices;
using System.Threading;
using System.Threading.Tasks;
using NUnit.Framework;

namespace Machnet.Tests
{
    internal static class Env
    {
        internal static string Get(string name)
        {
            string v = Environment.GetEnvironmentVariable(name);
            if (string.IsNullOrEmpty(v))
                throw new InvalidOperationException(name + " is not set: run the tests with ci/csharp.sh");
            return v;
        }

        /// <summary>The sidecar the tests attach to (127.0.0.2).</summary>
        internal static string Sock { get { return Get("MACHNET_TEST_SOCK"); } }
        /// <summary>The sidecar the echo server is attached to (127.0.0.1).</summary>
        internal static string PeerSock { get { return Get("MACHNET_TEST_PEER_SOCK"); } }
        internal static string LocalIp { get { return Get("MACHNET_TEST_LOCAL_IP"); } }
        internal static string PeerIp { get { return Get("MACHNET_TEST_PEER_IP"); } }
        internal static ushort EchoPort { get { return ushort.Parse(Get("MACHNET_TEST_ECHO_PORT")); } }

        /// <summary>Bound on waits for data (8 MiB echoes on a loaded machine).</summary>
        internal static readonly TimeSpan Long = TimeSpan.FromSeconds(60);

        /// <summary>Bound on waits for a cancellation or disposal to take effect (a hang guard).</summary>
        internal static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

        /// <summary>A channel on the local sidecar (or the peer's).</summary>
        internal static Channel Open(bool peer = false)
        {
            Sidecar.Init(peer ? PeerSock : Sock);
            return new Channel();
        }

        /// <summary>Deterministic pseudo-random bytes (xorshift), different per seed.</summary>
        internal static byte[] Pattern(int size, uint seed)
        {
            var b = new byte[size];
            uint x = seed * 2654435761u + 1;
            for (int i = 0; i < size; i++)
            {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b[i] = (byte)x;
            }
            return b;
        }

        /// <summary>Asserts byte-identical content (first difference reported; fast on 8 MiB).</summary>
        internal static void AssertSameBytes(byte[] expected, int offset, int count, byte[] actual)
        {
            Assert.AreEqual(count, actual.Length, "length");
            for (int i = 0; i < count; i++)
            {
                if (expected[offset + i] != actual[i])
                    Assert.Fail("byte {0} of {1} differs: expected {2}, got {3}", i, count, expected[offset + i], actual[i]);
            }
        }

        internal static void AssertSameBytes(byte[] expected, byte[] actual)
        {
            AssertSameBytes(expected, 0, expected.Length, actual);
        }

        internal static uint Ip(string dotted)
        {
            var p = dotted.Split('.');
            return (uint.Parse(p[0]) << 24) | (uint.Parse(p[1]) << 16) | (uint.Parse(p[2]) << 8) | uint.Parse(p[3]);
        }
    }

    [TestFixture]
    public class EchoTests
    {
        private Channel ch;
        private Flow flow;

        [SetUp]
        public void SetUp()
        {
            ch = Env.Open();
            flow = ch.Connect(Env.LocalIp, Env.PeerIp, Env.EchoPort);
        }

        [TearDown]
        public void TearDown()
        {
            if (ch != null)
                ch.Dispose();
        }

        [Test]
        public void VersionNamesTheAbi()
        {
            StringAssert.Contains("C ABI " + Sidecar.AbiVersion, Sidecar.Version);
            Assert.AreEqual(8 * 1024 * 1024, Sidecar.MaxMessageLength);
        }

        [Test]
        public void ConnectGivesAFlowFromThisSidecar()
        {
            Assert.AreEqual(Env.Ip(Env.LocalIp), flow.SourceAddress);
            Assert.AreEqual(Env.Ip(Env.PeerIp), flow.DestinationAddress);
            Assert.AreEqual(Env.EchoPort, flow.DestinationPort);
            Assert.AreEqual(Env.PeerIp + ":" + Env.EchoPort, flow.Destination.ToString());
        }

        [TestCase(1)]
        [TestCase(2)]
        [TestCase(63)]
        [TestCase(1000)]
        [TestCase(1500)]
        [TestCase(4096)]
        [TestCase(9000)]
        [TestCase(65535)]
        [TestCase(65536)]
        [TestCase(65537)]
        [TestCase(1 << 20)]
        [TestCase(3 * 1000 * 1000 + 7)]
        [TestCase(8 * 1024 * 1024)]
        public void EchoesByteIdentical(int size)
        {
            byte[] sent = Env.Pattern(size, (uint)size);
            ch.Send(flow, sent);
            Message reply = ch.Receive(Env.Long);
            Assert.AreEqual(flow.Reversed, reply.Flow, "the reply comes from the peer");
            Env.AssertSameBytes(sent, reply.Data);
        }

        [Test]
        public void SendsArraySegmentsAndRanges()
        {
            byte[] big = Env.Pattern(100000, 7);
            ch.Send(flow, new ArraySegment<byte>(big, 12345, 70000));
            Env.AssertSameBytes(big, 12345, 70000, ch.Receive(Env.Long).Data);
            ch.Send(flow, big, 99999, 1);
            Env.AssertSameBytes(big, 99999, 1, ch.Receive(Env.Long).Data);
        }

        [Test]
        public void WindowOfMessagesArrivesInOrder()
        {
            var sent = new byte[40][];
            for (int i = 0; i < sent.Length; i++)
            {
                sent[i] = Env.Pattern(1 + i * 3001, (uint)(1000 + i));
                ch.Send(flow, sent[i]);
            }
            for (int i = 0; i < sent.Length; i++)
                Env.AssertSameBytes(sent[i], ch.Receive(Env.Long).Data);
        }

        [Test]
        public void ReceivesIntoACallerBuffer()
        {
            byte[] sent = Env.Pattern(5000, 3);
            ch.Send(flow, sent);
            var buf = new byte[8000];
            int n;
            Flow from;
            Assert.IsTrue(ch.TryReceive(new ArraySegment<byte>(buf, 100, 7900), Env.Long, out n, out from));
            Assert.AreEqual(5000, n);
            Assert.AreEqual(flow.Reversed, from);
            var got = new byte[n];
            Buffer.BlockCopy(buf, 100, got, 0, n);
            Env.AssertSameBytes(sent, got);
        }

        [Test]
        public void TooSmallBufferKeepsTheMessage()
        {
            byte[] sent = Env.Pattern(3000, 4);
            ch.Send(flow, sent);
            int n;
            Flow from;
            var ex = Assert.Throws<MessageSizeException>(() =>
                ch.TryReceive(new ArraySegment<byte>(new byte[100]), Env.Long, out n, out from));
            Assert.AreEqual(3000, ex.Needed);
            Assert.AreEqual("ERR_MACHNET_BUFFER_TOO_SMALL", ex.CodeName);
            Assert.AreEqual(3000, ch.Peek());
            Env.AssertSameBytes(sent, ch.Receive(Env.Long).Data);
            Assert.AreEqual(0, ch.Peek());
        }

        [Test]
        public void ReceiveAsyncDeliversTheEcho()
        {
            byte[] sent = Env.Pattern(200000, 5);
            Task<Message> t = ch.ReceiveAsync();
            ch.Send(flow, sent);
            Assert.IsTrue(t.Wait(Env.Long), "the echo arrives");
            Env.AssertSameBytes(sent, t.Result.Data);
            // A message already waiting completes the task at once.
            ch.Send(flow, sent);
            var deadline = DateTime.UtcNow + Env.Long;
            while (ch.Peek() == 0 && DateTime.UtcNow < deadline)
                Thread.Sleep(1);
            Task<Message> ready = ch.ReceiveAsync();
            Assert.IsTrue(ready.IsCompleted, "completed synchronously");
            Env.AssertSameBytes(sent, ready.Result.Data);
        }

        [Test]
        public void ReceiveTimesOutWhenNothingComes()
        {
            Message m;
            Assert.IsFalse(ch.TryReceive(TimeSpan.Zero, out m));
            Assert.IsNull(m);
            Assert.IsFalse(ch.TryReceive(TimeSpan.FromMilliseconds(30), out m));
            var ex = Assert.Throws<MachnetTimeoutException>(() => ch.Receive(TimeSpan.FromMilliseconds(30)));
            Assert.AreEqual(110, ex.Errno);
            Assert.AreEqual("ERR_MACHNET_TIMEOUT", ex.CodeName);
            // A System.TimeoutException (what .NET code catches for timeouts) and an IMachnetError.
            Assert.IsInstanceOf<TimeoutException>(ex);
            Assert.IsInstanceOf<IMachnetError>(ex);
            Assert.Throws<MachnetTimeoutException>(() =>
            {
                try { ch.Receive(TimeSpan.FromMilliseconds(1)); }
                catch (MachnetException) { Assert.Fail("a timeout is not a MachnetException"); }
            });
            // The channel still works afterwards.
            ch.Send(flow, new byte[] { 42 });
            Assert.AreEqual(new byte[] { 42 }, ch.Receive(Env.Long).Data);
        }

        [Test]
        public void CancellingReceiveAsyncCancelsTheTaskAndConsumesNothing()
        {
            var cts = new CancellationTokenSource();
            Task<Message> t = ch.ReceiveAsync(cts.Token);
            Thread.Sleep(50); // let it block in libmachnet (the test passes either way)
            cts.Cancel();
            var agg = Assert.Throws<AggregateException>(() => t.Wait(Env.Guard));
            Assert.IsInstanceOf<OperationCanceledException>(agg.InnerException);
            Assert.IsTrue(t.IsCanceled);

            // Already cancelled: a cancelled task, nothing received.
            Task<Message> pre = ch.ReceiveAsync(cts.Token);
            Assert.IsTrue(pre.IsCanceled);

            byte[] sent = Env.Pattern(777, 6);
            ch.Send(flow, sent);
            Env.AssertSameBytes(sent, ch.Receive(Env.Long).Data);
        }

        /// <summary>Pending ReceiveAsync calls wait on the channel fd in the process's poller thread:
        /// none holds a thread-pool thread (with a pool thread blocked per receive, as before, the
        /// probe queued behind them would not run on a 2-thread pool, or would see fewer free threads).</summary>
        [Test]
        public void PendingReceiveAsyncHoldsNoPoolThread()
        {
            const int count = 64;
            int workers, io;
            ThreadPool.GetAvailableThreads(out workers, out io);
            var pending = new Task<Message>[count];
            for (int i = 0; i < count; i++)
                pending[i] = ch.ReceiveAsync();
            int probeWorkers = -1;
            Task probe = Task.Run(() =>
            {
                int w, o;
                ThreadPool.GetAvailableThreads(out w, out o);
                probeWorkers = w;
            });
            Assert.IsTrue(probe.Wait(Env.Guard), "a pool work item runs while 64 receives are pending");
            Assert.GreaterOrEqual(probeWorkers, workers - 1, "only the probe itself uses a pool thread");
            foreach (var t in pending)
                Assert.IsFalse(t.IsCompleted, "nothing was sent yet");
            // Each echo completes exactly one receive; together they get all messages.
            var want = new System.Collections.Generic.HashSet<byte>();
            for (int i = 0; i < count; i++)
            {
                want.Add((byte)i);
                ch.Send(flow, new byte[] { (byte)i });
            }
            Assert.IsTrue(Task.WaitAll(pending, Env.Long), "every receive completed");
            var got = new System.Collections.Generic.HashSet<byte>();
            foreach (var t in pending)
            {
                Assert.AreEqual(1, t.Result.Data.Length);
                Assert.IsTrue(got.Add(t.Result.Data[0]), "message {0} received twice", t.Result.Data[0]);
            }
            CollectionAssert.AreEquivalent(want, got);
        }

        [Test]
        public void SendAsyncKeepsCallOrderAndDelivers()
        {
            const int count = 200;
            var sends = new Task[count];
            for (int i = 0; i < count; i++)
                sends[i] = ch.SendAsync(flow, Env.Pattern(1 + (i * 7919) % 30000, (uint)i + 100));
            for (int i = 0; i < count; i++)
                Env.AssertSameBytes(Env.Pattern(1 + (i * 7919) % 30000, (uint)i + 100), ch.Receive(Env.Long).Data);
            Assert.IsTrue(Task.WaitAll(sends, Env.Long));
            byte[] seg = Env.Pattern(500, 99);
            Assert.IsTrue(ch.SendAsync(flow, new ArraySegment<byte>(seg, 10, 90)).Wait(Env.Long));
            Env.AssertSameBytes(seg, 10, 90, ch.Receive(Env.Long).Data);
            Assert.Throws<MachnetArgumentException>(() => ch.SendAsync(flow, new byte[0]));
            Assert.Throws<ArgumentNullException>(() => ch.SendAsync(flow, (byte[])null));
            var cts = new CancellationTokenSource();
            cts.Cancel();
            Assert.IsTrue(ch.SendAsync(flow, seg, cts.Token).IsCanceled);
        }

        [Test]
        public void SendAsyncFaultsOnAClosedFlowAndAfterDispose()
        {
            ch.CloseFlow(flow);
            var agg = Assert.Throws<AggregateException>(() => ch.SendAsync(flow, new byte[] { 1 }).Wait(Env.Guard));
            Assert.IsInstanceOf<FlowClosedException>(agg.InnerException);
            ch.Dispose();
            Task t = ch.SendAsync(flow, new byte[] { 1 });
            agg = Assert.Throws<AggregateException>(() => t.Wait(Env.Guard));
            Assert.IsInstanceOf<ObjectDisposedException>(agg.InnerException);
        }

        [Test]
        public void ConnectAsyncOpensAFlowOrFaults()
        {
            Task<Flow> t = ch.ConnectAsync(Env.LocalIp, Env.PeerIp, Env.EchoPort, Timeout.InfiniteTimeSpan);
            Assert.IsTrue(t.Wait(Env.Long));
            Flow f = t.Result;
            Assert.AreEqual(Env.EchoPort, f.DestinationPort);
            byte[] sent = Env.Pattern(321, 77);
            ch.Send(f, sent);
            Message m = ch.Receive(Env.Long);
            Env.AssertSameBytes(sent, m.Data);
            Assert.AreEqual(f, m.Flow.Reversed);

            Task<Flow> refused = ch.ConnectAsync(Env.LocalIp, Env.PeerIp, 4445, Timeout.InfiniteTimeSpan);
            var agg = Assert.Throws<AggregateException>(() => refused.Wait(Env.Long));
            Assert.IsTrue(agg.InnerException is ConnectionRefusedException || agg.InnerException is MachnetTimeoutException,
                agg.InnerException.ToString());
            Assert.Throws<ArgumentException>(() => ch.ConnectAsync("nonsense", 1));
            var cts = new CancellationTokenSource();
            cts.Cancel();
            Assert.IsTrue(ch.ConnectAsync(Env.PeerIp, Env.EchoPort, cts.Token).IsCanceled);
        }

        [Test]
        public void CancellingOneReceiveLeavesAnotherWaiting()
        {
            var cts = new CancellationTokenSource();
            Task<Message> cancelled = ch.ReceiveAsync(cts.Token);
            Task<Message> waiting = ch.ReceiveAsync();
            Thread.Sleep(50);
            cts.Cancel();
            Assert.Throws<AggregateException>(() => cancelled.Wait(Env.Guard));
            Assert.IsFalse(waiting.IsCompleted, "the other receive is still waiting");
            byte[] sent = Env.Pattern(1234, 8);
            ch.Send(flow, sent);
            Assert.IsTrue(waiting.Wait(Env.Long));
            Env.AssertSameBytes(sent, waiting.Result.Data);
        }

        [Test]
        public void ClosedFlowRefusesSends()
        {
            ch.CloseFlow(flow);
            Assert.Throws<FlowClosedException>(() => ch.Send(flow, new byte[] { 1 }));
            var unknown = new Flow(flow.SourceAddress, flow.SourcePort, flow.DestinationAddress, 1);
            Assert.Throws<FlowClosedException>(() => ch.CloseFlow(unknown));
        }

        [Test]
        public void OversizedMessageIsRefused()
        {
            var ex = Assert.Throws<MessageSizeException>(() => ch.Send(flow, new byte[Sidecar.MaxMessageLength + 1]));
            Assert.AreEqual(90, ex.Errno);
            Assert.AreEqual("ERR_MACHNET_MESSAGE_TOO_LARGE", ex.CodeName);
            Assert.AreEqual("machnet_send", ex.Operation);
        }
    }

    [TestFixture]
    public class ArgumentTests
    {
        private Channel ch;
        private readonly Flow flow = new Flow(0x7f000002, 1, 0x7f000001, 2);

        [SetUp]
        public void SetUp() { ch = Env.Open(); }

        [TearDown]
        public void TearDown()
        {
            if (ch != null)
                ch.Dispose();
        }

        [Test]
        public void SendValidatesItsArguments()
        {
            Assert.Throws<ArgumentNullException>(() => ch.Send(flow, (byte[])null));
            Assert.Throws<ArgumentNullException>(() => ch.Send(flow, null, 0, 1));
            Assert.Throws<ArgumentNullException>(() => ch.Send(flow, default(ArraySegment<byte>)));
            Assert.Throws<MachnetArgumentException>(() => ch.Send(flow, new byte[0]));
            Assert.Throws<MachnetArgumentException>(() => ch.Send(flow, new ArraySegment<byte>(new byte[4], 4, 0)));
            Assert.Throws<ArgumentOutOfRangeException>(() => ch.Send(flow, new byte[4], -1, 2));
            Assert.Throws<ArgumentOutOfRangeException>(() => ch.Send(flow, new byte[4], 0, -2));
            Assert.Throws<ArgumentException>(() => ch.Send(flow, new byte[4], 3, 2));
            Assert.Throws<ArgumentException>(() => ch.Send(flow, new byte[4], int.MaxValue, 1));
        }

        [Test]
        public void ReceiveValidatesItsArguments()
        {
            Message m;
            int n;
            Flow f;
            Assert.Throws<ArgumentOutOfRangeException>(() => ch.Receive(TimeSpan.FromMilliseconds(-5)));
            Assert.Throws<ArgumentOutOfRangeException>(() => ch.TryReceive(TimeSpan.FromSeconds(-1), out m));
            Assert.Throws<ArgumentNullException>(() => ch.TryReceive(default(ArraySegment<byte>), TimeSpan.Zero, out n, out f));
            Assert.Throws<ArgumentException>(() => ch.TryReceive(new ArraySegment<byte>(new byte[3], 3, 0), TimeSpan.Zero, out n, out f));
            Assert.Throws<ArgumentNullException>(() => new Message(flow, null));
        }

        [Test]
        public void AddressesAreValidated()
        {
            Assert.Throws<ArgumentNullException>(() => ch.Listen(null, 5));
            Assert.Throws<ArgumentNullException>(() => ch.Connect(Env.LocalIp, null, 5));
            Assert.Throws<ArgumentException>(() => ch.Connect("300.1.1.1", 5));
            Assert.Throws<ArgumentException>(() => ch.Connect(Env.LocalIp, "1.2.3", 5));
            Assert.Throws<ArgumentException>(() => ch.Listen("localhost", 5));
            Assert.Throws<ArgumentOutOfRangeException>(() => ch.Connect(Env.LocalIp, Env.PeerIp, 5, TimeSpan.FromSeconds(-2)));
            Assert.Throws<ArgumentException>(() => Sidecar.Init(""));
        }
    }

    [TestFixture]
    public class LifecycleAndErrorTests
    {
        [TearDown]
        public void TearDown() { Sidecar.Init(Env.Sock); }

        [Test]
        public void DisposeIsIdempotentAndLaterCallsThrow()
        {
            Channel ch = Env.Open();
            Flow flow = ch.Connect(Env.LocalIp, Env.PeerIp, Env.EchoPort);
            ch.Dispose();
            ch.Dispose();
            Assert.IsTrue(ch.IsDisposed);
            Message m;
            Assert.Throws<ObjectDisposedException>(() => ch.Send(flow, new byte[] { 1 }));
            Assert.Throws<ObjectDisposedException>(() => ch.TryReceive(TimeSpan.Zero, out m));
            Assert.Throws<ObjectDisposedException>(() => ch.Listen(9));
            Assert.Throws<ObjectDisposedException>(() => ch.Peek());
            Task<Message> t = ch.ReceiveAsync();
            Assert.IsTrue(t.IsFaulted);
            Assert.IsInstanceOf<ObjectDisposedException>(t.Exception.InnerException);
        }

        [Test]
        public void AbortDisposesAndLaterCallsThrow()
        {
            Channel ch = Env.Open();
            Flow flow = ch.Connect(Env.LocalIp, Env.PeerIp, Env.EchoPort);
            ch.Abort();
            Assert.IsTrue(ch.IsDisposed);
            ch.Abort();
            ch.Dispose();
            Assert.Throws<ObjectDisposedException>(() => ch.Send(flow, new byte[] { 1 }));
            Assert.Throws<ObjectDisposedException>(() => ch.Peek());
        }

        [Test]
        public void DisposeWakesABlockedReceive()
        {
            Channel ch = Env.Open();
            Exception seen = null;
            var t = new Thread(() =>
            {
                try { ch.Receive(); }
                catch (Exception e) { seen = e; }
            });
            t.Start();
            Thread.Sleep(50);
            Task<Message> pending = ch.ReceiveAsync();
            ch.Dispose();
            Assert.IsTrue(t.Join(Env.Guard), "the blocked receive returned");
            Assert.IsInstanceOf<ObjectDisposedException>(seen);
            var agg = Assert.Throws<AggregateException>(() => pending.Wait(Env.Guard));
            Assert.IsInstanceOf<ObjectDisposedException>(agg.InnerException);
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void AbandonListeningChannel(ushort port)
        {
            var ch = new Channel();
            ch.Listen(port);
        }

        [Test]
        public void FinalizerDetachesAnAbandonedChannel()
        {
            const ushort port = 7301;
            Sidecar.Init(Env.Sock);
            AbandonListeningChannel(port);
            // The abandoned channel still listens: a connect from the peer's sidecar is accepted.
            // (Another channel of this process would join the port's listen group rather than be
            // refused, docs/CHANNEL.md §2, so the port is probed from outside.)
            using (var peer = Env.Open(peer: true))
                peer.Connect(Env.PeerIp, Env.LocalIp, port, Env.Guard);
            GC.Collect();
            GC.WaitForPendingFinalizers();
            // The finalizer detached it: nobody listens on the port any more.
            using (var peer = Env.Open(peer: true))
            {
                var refused = Assert.Catch<Exception>(() => peer.Connect(Env.PeerIp, Env.LocalIp, port, Env.Guard));
                Assert.IsTrue(refused is ConnectionRefusedException || refused is MachnetTimeoutException, refused.ToString());
            }
            Sidecar.Init(Env.Sock);
            using (var again = new Channel())
                again.Listen(port);
        }

        /// <summary>Starts a third sidecar (127.0.0.3, control socket <paramref name="name"/> in
        /// MACHNET_TEST_DIR) and points Sidecar.Init at it; returns once it accepts attaches (the
        /// caller kills it).</summary>
        private static System.Diagnostics.Process StartDoomedSidecar(string name)
        {
            string sock = Env.Get("MACHNET_TEST_DIR") + "/" + name + ".sock";
            var psi = new System.Diagnostics.ProcessStartInfo(Env.Get("MACHNET_TEST_BIN"),
                "--local-ip 127.0.0.3 --control-socket " + sock + " --allow-user " + Env.Get("MACHNET_TEST_UID") +
                " --udp-port-base " + Env.Get("MACHNET_TEST_UDP_BASE") + " --udp-port-count 8 --stats-interval 0")
            {
                UseShellExecute = false,
                RedirectStandardError = true,
            };
            var sidecar = System.Diagnostics.Process.Start(psi);
            sidecar.ErrorDataReceived += (s, e) => { };
            sidecar.BeginErrorReadLine();
            for (int i = 0; i < 400; i++)
            {
                try
                {
                    Sidecar.Init(sock);
                    return sidecar;
                }
                catch (MachnetException)
                {
                    Thread.Sleep(25); // waiting for a process to come up; nothing to wait on
                }
            }
            sidecar.Kill();
            sidecar.WaitForExit();
            sidecar.Dispose();
            Assert.Fail("the third sidecar never came up");
            return null;
        }

        [Test]
        public void SidecarGoneWakesABlockedReceive()
        {
            // A third sidecar (127.0.0.3) started here and killed under a blocked receive.
            using (var sidecar = StartDoomedSidecar("doomed-cs"))
            {
                try
                {
                    using (var ch = new Channel())
                    {
                        ch.Listen("127.0.0.3", 7500);
                        Exception seen = null;
                        var t = new Thread(() =>
                        {
                            try { ch.Receive(); }
                            catch (Exception e) { seen = e; }
                        });
                        t.Start();
                        Task<Message> pending = ch.ReceiveAsync();
                        sidecar.Kill();
                        sidecar.WaitForExit();
                        Assert.IsTrue(t.Join(Env.Guard), "the blocked receive returned");
                        Assert.IsInstanceOf<SidecarGoneException>(seen, seen == null ? "no exception" : seen.ToString());
                        // The pending ReceiveAsync notices too (the poller's liveness round).
                        var agg = Assert.Throws<AggregateException>(() => pending.Wait(Env.Guard));
                        Assert.IsInstanceOf<SidecarGoneException>(agg.InnerException, agg.InnerException.ToString());
                        Assert.Throws<SidecarGoneException>(() => ch.Listen("127.0.0.3", 7501));
                        Assert.Throws<SidecarGoneException>(() => new Channel());
                    }
                }
                finally
                {
                    if (!sidecar.HasExited)
                        sidecar.Kill();
                }
            }
        }

        /// <summary>Issue 14: a send into a ring with room used to succeed after the sidecar died
        /// (the message was lost). Every call that hands something to the sidecar must throw
        /// SidecarGoneException, with nothing received in between.</summary>
        [Test]
        public void EveryCallThrowsSidecarGoneAfterTheSidecarDied()
        {
            using (var sidecar = StartDoomedSidecar("doomed-send-cs"))
            {
                try
                {
                    using (var ch = new Channel())
                    {
                        Flow flow = ch.Connect("127.0.0.3", Env.PeerIp, Env.EchoPort);
                        byte[] msg = Env.Pattern(64, 14);
                        ch.Send(flow, msg);
                        Env.AssertSameBytes(msg, 0, msg.Length, ch.Receive(Env.Long).Data);
                        sidecar.Kill();
                        sidecar.WaitForExit(); // reaped: the process is dead
                        var gone = Assert.Throws<SidecarGoneException>(() => ch.Send(flow, msg));
                        Assert.AreEqual("ERR_MACHNET_SIDECAR_GONE", gone.CodeName, "the code tells a gone sidecar from a reset flow");
                        Assert.AreEqual(104, gone.Errno);
                        Assert.Throws<SidecarGoneException>(() => ch.Send(flow, new ArraySegment<byte>(msg, 1, 10)));
                        Assert.Throws<SidecarGoneException>(() => ch.Connect("127.0.0.3", Env.PeerIp, Env.EchoPort));
                        Assert.Throws<SidecarGoneException>(() => ch.Listen("127.0.0.3", 7601));
                        Assert.Throws<SidecarGoneException>(() => ch.CloseFlow(flow));
                        Assert.Throws<SidecarGoneException>(() => ch.Receive(Env.Guard));
                    }
                }
                finally
                {
                    if (!sidecar.HasExited)
                        sidecar.Kill();
                    Sidecar.Init(Env.Sock);
                }
            }
        }

        [Test]
        public void ErrorsMapToExceptionTypes()
        {
            using (Channel ch = Env.Open())
            {
                var refused = Assert.Catch<Exception>(() => ch.Connect(Env.LocalIp, Env.PeerIp, 4444));
                Assert.IsTrue(refused is ConnectionRefusedException || refused is MachnetTimeoutException, refused.ToString());
                Assert.AreEqual("machnet_connect", ((IMachnetError)refused).Operation);
                ch.Listen(7302);
                // The same channel twice: in use. Another channel of this process would join the
                // port's listen group (docs/CHANNEL.md §2); only another process is refused.
                var inUse = Assert.Throws<PortInUseException>(() => ch.Listen(Env.LocalIp, 7302));
                Assert.AreEqual(98, inUse.Errno);
                Assert.AreEqual("ERR_MACHNET_PORT_IN_USE", inUse.CodeName);
                StringAssert.StartsWith("machnet_listen: ", inUse.Message);
                // Another channel of this process joins the port's listen group: flows from the
                // peer sidecar are each accepted by one member and exchange a message with it.
                using (var other = new Channel())
                {
                    other.Listen(Env.LocalIp, 7302);
                    int[] accepted = ListenGroup.Exchange(new[] { ch, other }, 7302, 8);
                    Console.WriteLine("listen group of 2 channels: flows accepted per channel {0}", string.Join(", ", accepted));
                }
                var notMine = Assert.Catch<MachnetException>(() => ch.Listen("10.255.255.1", 7303));
                Assert.AreEqual(99, notMine.Errno); // EADDRNOTAVAIL
                Assert.AreEqual("ERR_MACHNET_INVALID_ARGUMENT", notMine.CodeName);
                var empty = Assert.Throws<MachnetArgumentException>(() => ch.Send(default(Flow), new byte[0]));
                Assert.IsInstanceOf<ArgumentException>(empty);
                Assert.AreEqual("ERR_MACHNET_INVALID_ARGUMENT", empty.CodeName);
                Assert.AreEqual(22, empty.Errno);
            }
            var unreachable = Assert.Catch<MachnetException>(() => Sidecar.Init("/nonexistent/machnet.sock"));
            Assert.AreEqual("ERR_MACHNET_SIDECAR_UNREACHABLE", unreachable.CodeName);
        }

        [Test]
        public void TwoChannelsTalkAcrossSidecars()
        {
            const ushort port = 7304;
            using (Channel server = Env.Open(peer: true))
            using (Channel client = Env.Open())
            {
                // "0.0.0.0": libmachnet checks a named local_ip against the process's latest
                // Sidecar.Init (here the client's sidecar), not the channel's own sidecar.
                server.Listen(port);
                Flow flow = client.Connect(Env.LocalIp, Env.PeerIp, port);
                byte[] ask = Env.Pattern(100000, 11);
                client.Send(flow, ask);
                Message got = server.Receive(Env.Long);
                Env.AssertSameBytes(ask, got.Data);
                Assert.AreEqual(Env.LocalIp, got.Flow.Source.Address.ToString(), "Source = the peer");
                Assert.AreEqual(flow, got.Flow, "the server sees the client's flow: Source = the client");
                byte[] answer = Env.Pattern(33, 12);
                server.Send(got.Flow, answer);
                Message back = client.Receive(Env.Long);
                Env.AssertSameBytes(answer, back.Data);
                Assert.AreEqual(flow, back.Flow.Reversed);
            }
        }

        /// <summary>The client aborts its channel: the server's pending ReceiveAsync wakes and
        /// raises FlowEvent with Reset for that flow (before: nothing until the next send failed).</summary>
        [Test]
        public void PeerAbortIsAResetEventDuringReceiveAsync()
        {
            const ushort port = 7305;
            using (Channel server = Env.Open(peer: true))
            using (Channel client = Env.Open())
            {
                server.Listen(port);
                Flow flow = client.Connect(Env.LocalIp, Env.PeerIp, port);
                client.Send(flow, new byte[] { 7 });
                Message first = server.Receive(Env.Long);
                var seen = new TaskCompletionSource<FlowEventArgs>();
                server.FlowEvent += (sender, ev) =>
                {
                    Assert.AreSame(server, sender);
                    seen.TrySetResult(ev);
                };
                Task<Message> pending = server.ReceiveAsync();
                client.Abort();
                Assert.IsTrue(seen.Task.Wait(Env.Guard), "the reset was raised while ReceiveAsync waited");
                FlowEventArgs e = seen.Task.Result;
                Assert.AreEqual(FlowEventKind.Reset, e.Kind, e.ToString());
                Assert.AreEqual(first.Flow, e.Flow, "the event names the flow (Source = the peer)");
                Assert.AreEqual(104, e.Errno);
                Assert.AreEqual("ERR_MACHNET_FLOW_RESET", e.CodeName);
                Assert.IsTrue(e.IsTerminal);
                Assert.IsFalse(pending.IsCompleted, "an event is not a message");
                FlowClosedException ex = e.ToException();
                Assert.AreEqual("ERR_MACHNET_FLOW_RESET", ex.CodeName);
                Assert.AreEqual(e.Flow, ex.Flow);
                Assert.AreEqual(FlowEventKind.Reset, ex.Kind);
                Assert.Throws<FlowClosedException>(() => server.Send(first.Flow, new byte[] { 1 }));
                Assert.AreEqual(0, server.FlowEventsDropped);
            }
        }

        /// <summary>Without a handler, events wait for TryGetFlowEvent: a graceful close by the peer
        /// gives PeerClosed, then Closed with errno 0, after the peer's last message.</summary>
        [Test]
        public void PeerCloseIsPeerClosedThenClosedForTryGetFlowEvent()
        {
            const ushort port = 7306;
            using (Channel server = Env.Open(peer: true))
            using (Channel client = Env.Open())
            {
                server.Listen(port);
                Flow flow = client.Connect(Env.LocalIp, Env.PeerIp, port);
                client.Send(flow, new byte[] { 1, 2, 3 });
                client.CloseFlow(flow);
                Message last = server.Receive(Env.Long);
                Assert.AreEqual(new byte[] { 1, 2, 3 }, last.Data);
                var kinds = new System.Collections.Generic.List<FlowEventKind>();
                var deadline = DateTime.UtcNow + Env.Guard;
                while (!kinds.Contains(FlowEventKind.Closed) && DateTime.UtcNow < deadline)
                {
                    FlowEventArgs ev;
                    if (server.TryGetFlowEvent(out ev))
                    {
                        Assert.AreEqual(last.Flow, ev.Flow);
                        kinds.Add(ev.Kind);
                        if (ev.Kind == FlowEventKind.Closed)
                            Assert.AreEqual(0, ev.Errno, "a graceful end");
                        continue;
                    }
                    Message m;
                    Assert.IsFalse(server.TryReceive(TimeSpan.FromMilliseconds(20), out m), "no message after the last one");
                }
                CollectionAssert.AreEqual(new[] { FlowEventKind.PeerClosed, FlowEventKind.Closed }, kinds);
            }
        }

        [Test]
        public void ConcurrentSendAndReceiveOnOneChannel()
        {
            using (Channel ch = Env.Open())
            {
                Flow flow = ch.Connect(Env.LocalIp, Env.PeerIp, Env.EchoPort);
                const int count = 300;
                var sender = Task.Factory.StartNew(() =>
                {
                    for (int i = 0; i < count; i++)
                        ch.Send(flow, Env.Pattern(1 + (i * 977) % 20000, (uint)i));
                }, TaskCreationOptions.LongRunning);
                for (int i = 0; i < count; i++)
                    Env.AssertSameBytes(Env.Pattern(1 + (i * 977) % 20000, (uint)i), ch.Receive(Env.Long).Data);
                Assert.IsTrue(sender.Wait(Env.Long));
            }
        }
    }
}
