// The cross-language conformance cases (conformance/cases.json, described in
// conformance/README.md), one NUnit test case per JSON case, run against the apps ci/csharp.sh
// starts:
//   MACHNET_CONFORMANCE_CASES       cases.json (default: conformance/cases.json, looked up from the
//                                   current directory upwards)
//   MACHNET_CONFORMANCE_SERVER_IP   the sidecar the apps are attached to (127.0.0.1)
//   MACHNET_CONFORMANCE_ECHO_PORT   `machnet-echo server`
//   MACHNET_CONFORMANCE_KV_PORT     `machnet-kv server`
//   MACHNET_CONFORMANCE_RAFT_PORT   the KV port of the Raft cluster's leader (examples/raft; app
//                                   `raft` speaks the KV app's request format)
//   MACHNET_TEST_SOCK / MACHNET_TEST_PEER_SOCK  the client sidecar and the server sidecar
// The test names are "NN_<case name>" so NUnit (which sorts by name) runs them in the file's order.
//
// Error names (conformance/README.md) as this binding reports them; every one is an
// IMachnetError whose CodeName is the README's code name (Codes), as the Python and Node.js
// runners check:
//   refused           ConnectionRefusedException   ERR_MACHNET_CONNECTION_REFUSED
//   invalid_argument  MachnetArgumentException     ERR_MACHNET_INVALID_ARGUMENT (an
//                     ArgumentException, thrown by the binding before calling libmachnet)
//   too_large         MessageSizeException         ERR_MACHNET_MESSAGE_TOO_LARGE
//   reset             FlowClosedException          ERR_MACHNET_FLOW_CLOSED (ENOTCONN, not
//                     ECONNRESET/SidecarGoneException): a receive does not throw for the reset
//                     (it returns nothing); the sidecar drops the flow and the next send fails
//                     because the flow is no longer open.
//   closed            FlowClosedException          ERR_MACHNET_FLOW_CLOSED (ENOTCONN, or EPIPE
//                     while this side's close is under way): a receive that passes the peer's
//                     graceful close closes this side, and the next send fails.
// Events (a case's "event": peer_closed, reset, timed_out, refused, closed, request_failed) are
// checked as flow events (Channel.TryGetFlowEvent, FlowEventKind) naming the case's flow.
using System;
using System.Collections.Generic;
using System.IO;
using System.Runtime.Serialization;
using System.Runtime.Serialization.Json;
using System.Text;
using System.Threading;
using NUnit.Framework;

namespace Machnet.Tests
{
    [DataContract]
    public sealed class ConformanceStep
    {
        [DataMember(Name = "request")] public string Request { get; set; }
        [DataMember(Name = "status")] public string Status { get; set; }
        [DataMember(Name = "id")] public long Id { get; set; }
        [DataMember(Name = "body")] public string Body { get; set; }
        [DataMember(Name = "body_contains")] public string BodyContains { get; set; }
    }

    [DataContract]
    public sealed class ConformanceCase
    {
        [DataMember(Name = "name")] public string Name { get; set; }
        [DataMember(Name = "app")] public string App { get; set; }
        [DataMember(Name = "do")] public string Do { get; set; }
        [DataMember(Name = "sizes")] public int[] Sizes { get; set; }
        [DataMember(Name = "size")] public int Size { get; set; }
        [DataMember(Name = "count")] public int Count { get; set; }
        [DataMember(Name = "flows")] public int Flows { get; set; }
        [DataMember(Name = "timeout_ms")] public int TimeoutMs { get; set; }
        [DataMember(Name = "port")] public int Port { get; set; }
        [DataMember(Name = "error")] public string Error { get; set; }
        [DataMember(Name = "event")] public string Event { get; set; }
        [DataMember(Name = "steps")] public ConformanceStep[] Steps { get; set; }
        [DataMember(Name = "key_prefix")] public string KeyPrefix { get; set; }

        public override string ToString() { return Name; }
    }

    [DataContract]
    public sealed class ConformanceFile
    {
        [DataMember(Name = "version")] public int Version { get; set; }
        [DataMember(Name = "cases")] public ConformanceCase[] Cases { get; set; }
    }

    [TestFixture]
    public class ConformanceTests
    {
        internal static string CasesPath()
        {
            string p = Environment.GetEnvironmentVariable("MACHNET_CONFORMANCE_CASES");
            if (!string.IsNullOrEmpty(p))
                return p;
            for (var d = new DirectoryInfo(Directory.GetCurrentDirectory()); d != null; d = d.Parent)
            {
                string c = Path.Combine(Path.Combine(d.FullName, "conformance"), "cases.json");
                if (File.Exists(c))
                    return c;
            }
            return Path.Combine("conformance", "cases.json");
        }

        internal static ConformanceFile Load()
        {
            string path = CasesPath();
            using (var s = File.OpenRead(path))
            {
                var file = (ConformanceFile)new DataContractJsonSerializer(typeof(ConformanceFile)).ReadObject(s);
                if (file == null || file.Version != 1 || file.Cases == null || file.Cases.Length == 0)
                    throw new InvalidDataException(path + ": not a version-1 case file with cases");
                return file;
            }
        }

        /// <summary>One test case per JSON case; a file that cannot be read gives one failing case.</summary>
        public static IEnumerable<TestCaseData> Cases()
        {
            ConformanceFile file = null;
            string error = null;
            try { file = Load(); }
            catch (Exception e) { error = e.GetType().Name + ": " + e.Message; }
            if (file == null)
            {
                yield return new TestCaseData(null, error).SetName("00_load_cases");
                yield break;
            }
            for (int i = 0; i < file.Cases.Length; i++)
            {
                ConformanceCase c = file.Cases[i];
                yield return new TestCaseData(c, null).SetName(string.Format("{0:D2}_{1}", i + 1, c.Name));
            }
        }

        private Channel ch;
        private readonly List<Flow> flows = new List<Flow>();

        [TearDown]
        public void TearDown()
        {
            if (ch != null)
            {
                foreach (Flow f in flows)
                {
                    try { ch.CloseFlow(f); } catch (MachnetException) { }
                }
                ch.Dispose();
                ch = null;
            }
            flows.Clear();
            Sidecar.Init(Env.Sock);
        }

        private static string ServerIp { get { return Env.Get("MACHNET_CONFORMANCE_SERVER_IP"); } }

        private static ushort PortOf(string app, string caseName)
        {
            if (app == "echo")
                return ushort.Parse(Env.Get("MACHNET_CONFORMANCE_ECHO_PORT"));
            if (app == "kv")
                return ushort.Parse(Env.Get("MACHNET_CONFORMANCE_KV_PORT"));
            if (app == "raft")
                return ushort.Parse(Env.Get("MACHNET_CONFORMANCE_RAFT_PORT"));
            Assert.Fail("case {0}: unknown app {1}", caseName, app ?? "null");
            return 0;
        }

        /// <summary>Byte i of a size-n message: (i * 7 + n) mod 256.</summary>
        internal static byte[] Payload(int n)
        {
            var b = new byte[n];
            for (int i = 0; i < n; i++)
                b[i] = (byte)((i * 7 + n) % 256);
            return b;
        }

        private Flow Connect(ushort port)
        {
            Flow f = ch.Connect("0.0.0.0", ServerIp, port, TimeSpan.FromSeconds(10));
            flows.Add(f);
            return f;
        }

        private static void Same(string what, byte[] want, byte[] got)
        {
            if (want.Length != got.Length)
                Assert.Fail("{0}: {1} bytes received, {2} sent", what, got.Length, want.Length);
            for (int i = 0; i < want.Length; i++)
            {
                if (want[i] != got[i])
                    Assert.Fail("{0}: byte {1} differs: sent {2}, received {3}", what, i, want[i], got[i]);
            }
        }

        private static void WantError(string what, string name, Exception e)
        {
            bool ok;
            switch (name)
            {
                case "refused": ok = e is ConnectionRefusedException; break;
                case "invalid_argument": ok = e is MachnetArgumentException; break;
                case "too_large": ok = e is MessageSizeException; break;
                case "reset": ok = e is FlowClosedException; break;
                case "closed": ok = e is FlowClosedException; break;
                default: Assert.Fail("{0}: unknown error name {1}", what, name); return;
            }
            if (!ok)
                Assert.Fail("{0} failed with {1}; want {2}", what, e, name);
            var me = e as IMachnetError;
            if (me == null)
                Assert.Fail("{0} failed with {1}, not an IMachnetError; want {2}", what, e, name);
            Assert.AreEqual(Codes[name], me.CodeName, "{0}: code name of {1}", what, e);
        }

        /// <summary>The code name of each error name, the same in every binding (conformance/README.md).</summary>
        private static readonly Dictionary<string, string> Codes = new Dictionary<string, string>
        {
            { "refused", "ERR_MACHNET_CONNECTION_REFUSED" },
            { "invalid_argument", "ERR_MACHNET_INVALID_ARGUMENT" },
            { "too_large", "ERR_MACHNET_MESSAGE_TOO_LARGE" },
            { "reset", "ERR_MACHNET_FLOW_CLOSED" },
            { "closed", "ERR_MACHNET_FLOW_CLOSED" },
        };

        private static Exception Catch(Action a)
        {
            try { a(); }
            catch (Exception e) { return e; }
            return null;
        }

        private Message Recv(string what)
        {
            Message m;
            if (!ch.TryReceive(Env.Long, out m))
                Assert.Fail("{0}: nothing received within {1}", what, Env.Long);
            return m;
        }

        private static byte[] Hex(string s)
        {
            var b = new byte[s.Length / 2];
            for (int i = 0; i < b.Length; i++)
                b[i] = Convert.ToByte(s.Substring(2 * i, 2), 16);
            return b;
        }

        private static string ToHex(byte[] b, int offset)
        {
            var sb = new StringBuilder();
            for (int i = offset; i < b.Length; i++)
                sb.Append(b[i].ToString("x2"));
            return sb.ToString();
        }

        private static readonly Dictionary<string, byte> Status = new Dictionary<string, byte>
        {
            { "ok", 0 }, { "not_found", 1 }, { "bad_request", 2 }, { "server_error", 3 },
        };

        private static void KvResponse(string what, ConformanceStep s, byte[] got)
        {
            byte want;
            if (!Status.TryGetValue(s.Status ?? "", out want))
                Assert.Fail("{0}: unknown status {1}", what, s.Status);
            if (got.Length < 5)
                Assert.Fail("{0}: response of {1} bytes ({2}), shorter than its header", what, got.Length, ToHex(got, 0));
            string bodyText = Encoding.UTF8.GetString(got, 5, got.Length - 5);
            if (got[0] != want)
                Assert.Fail("{0}: status {1}, want {2} ({3}); body \"{4}\"", what, got[0], want, s.Status, bodyText);
            long id = BitConverter.ToUInt32(got, 1);
            if (id != s.Id)
                Assert.Fail("{0}: id {1}, want {2}", what, id, s.Id);
            if (s.Body != null && ToHex(got, 5) != s.Body.ToLowerInvariant())
                Assert.Fail("{0}: body {1}, want {2}", what, ToHex(got, 5), s.Body);
            if (s.BodyContains != null && bodyText.IndexOf(s.BodyContains, StringComparison.Ordinal) < 0)
                Assert.Fail("{0}: body \"{1}\" does not contain \"{2}\"", what, bodyText, s.BodyContains);
        }

        private static byte[] KvRequest(byte op, uint id, byte[] key, byte[] value)
        {
            var m = new byte[7 + key.Length + value.Length];
            m[0] = op;
            BitConverter.GetBytes(id).CopyTo(m, 1);
            BitConverter.GetBytes((ushort)key.Length).CopyTo(m, 5);
            key.CopyTo(m, 7);
            value.CopyTo(m, 7 + key.Length);
            return m;
        }

        [TestCaseSource("Cases")]
        public void Conformance(ConformanceCase c, string loadError)
        {
            if (c == null)
                Assert.Fail("cannot read the conformance cases ({0}): {1}", CasesPath(), loadError);
            Sidecar.Init(Env.Sock);
            ch = new Channel();
            switch (c.Do)
            {
                case "echo": Echo(c); break;
                case "echo_pipelined": EchoPipelined(c); break;
                case "echo_flows": EchoFlows(c); break;
                case "recv_timeout": RecvTimeout(c); break;
                case "connect_error": ConnectError(c); break;
                case "send_error": SendError(c); break;
                case "peer_goes_away": PeerGoesAway(c); break;
                case "peer_closes_after_sending": PeerClosesAfterSending(c); break;
                case "kv": Kv(c); break;
                case "kv_pipelined": KvPipelined(c); break;
                default: Assert.Fail("case {0}: unknown do \"{1}\"", c.Name, c.Do); break;
            }
        }

        private void Echo(ConformanceCase c)
        {
            Flow f = Connect(PortOf(c.App, c.Name));
            foreach (int size in c.Sizes)
            {
                byte[] msg = Payload(size);
                ch.Send(f, msg);
                Message got = Recv("size " + size);
                Assert.AreEqual(f.Reversed, got.Flow, "size {0}: the echo arrives on the flow it was sent on", size);
                Same("size " + size, msg, got.Data);
            }
        }

        private void EchoPipelined(ConformanceCase c)
        {
            Flow f = Connect(PortOf(c.App, c.Name));
            var msgs = new byte[c.Count][];
            for (int k = 0; k < c.Count; k++)
            {
                msgs[k] = Payload(c.Size);
                BitConverter.GetBytes((uint)k).CopyTo(msgs[k], 0);
                ch.Send(f, msgs[k]);
            }
            for (int k = 0; k < c.Count; k++)
            {
                Message got = Recv("message " + k);
                Assert.AreEqual(f.Reversed, got.Flow, "message {0}: on the flow it was sent on", k);
                if (got.Data.Length >= 4 && BitConverter.ToUInt32(got.Data, 0) != (uint)k)
                    Assert.Fail("message {0}: got message {1} (out of order)", k, BitConverter.ToUInt32(got.Data, 0));
                Same("message " + k, msgs[k], got.Data);
            }
        }

        private void EchoFlows(ConformanceCase c)
        {
            ushort port = PortOf(c.App, c.Name);
            var fs = new Flow[c.Flows];
            for (int i = 0; i < fs.Length; i++)
                fs[i] = Connect(port);
            byte[] msg = Payload(c.Size);
            for (int round = 0; round < c.Count; round++)
            {
                foreach (Flow f in fs)
                    ch.Send(f, msg);
                var seen = new bool[fs.Length];
                for (int k = 0; k < fs.Length; k++)
                {
                    Message got = Recv("round " + round + " message " + k);
                    int idx = Array.IndexOf(fs, got.Flow.Reversed);
                    if (idx < 0)
                        Assert.Fail("round {0}: a message arrived on {1}, none of the flows", round, got.Flow);
                    if (seen[idx])
                        Assert.Fail("round {0}: two messages on flow {1} ({2})", round, idx, got.Flow);
                    seen[idx] = true;
                    Same("round " + round + " flow " + idx, msg, got.Data);
                }
            }
        }

        private void RecvTimeout(ConformanceCase c)
        {
            TimeSpan want = TimeSpan.FromMilliseconds(c.TimeoutMs);
            var sw = System.Diagnostics.Stopwatch.StartNew();
            Message m;
            bool got = ch.TryReceive(want, out m);
            sw.Stop();
            Assert.IsFalse(got, "TryReceive({0}) returned a message", want);
            Assert.IsNull(m);
            Assert.GreaterOrEqual(sw.Elapsed, want, "TryReceive returned early");
            Assert.Less(sw.Elapsed, want + TimeSpan.FromSeconds(3), "TryReceive returned late");
            // Receive(timeout) raises the binding's timeout error instead.
            sw = System.Diagnostics.Stopwatch.StartNew();
            Exception e = Catch(() => ch.Receive(want));
            sw.Stop();
            Assert.IsInstanceOf<MachnetTimeoutException>(e, "Receive({0})", want);
            Assert.GreaterOrEqual(sw.Elapsed, want, "Receive returned early");
        }

        private void ConnectError(ConformanceCase c)
        {
            Exception e = Catch(() => flows.Add(ch.Connect("0.0.0.0", ServerIp, (ushort)c.Port, TimeSpan.FromSeconds(10))));
            if (e == null)
                Assert.Fail("connecting to {0}:{1} succeeded; want {2}", ServerIp, c.Port, c.Error);
            WantError("connect to port " + c.Port, c.Error, e);
        }

        private void SendError(ConformanceCase c)
        {
            Flow f = Connect(PortOf(c.App, c.Name));
            Exception e = Catch(() => ch.Send(f, new byte[c.Size]));
            if (e == null)
                Assert.Fail("a send of {0} bytes succeeded; want {1}", c.Size, c.Error);
            WantError("send of " + c.Size + " bytes", c.Error, e);
            byte[] one = Payload(1);
            ch.Send(f, one);
            Same("1-byte echo after the failed send (nothing of the failed send may arrive)", one, Recv("1-byte echo").Data);
        }

        /// <summary>A channel of the server sidecar listening on <paramref name="port"/>.</summary>
        private static Channel Listener(int port)
        {
            // A channel keeps the sidecar it was opened on: open the listener after
            // Init(server sidecar), then go back to the client sidecar.
            Sidecar.Init(Env.PeerSock);
            Channel server;
            try { server = new Channel(); }
            finally { Sidecar.Init(Env.Sock); }
            try { server.Listen((ushort)port); }
            catch { server.Dispose(); throw; }
            return server;
        }

        private void PeerGoesAway(ConformanceCase c)
        {
            Channel server = Listener(c.Port);
            try
            {
                Flow f = Connect((ushort)c.Port);
                byte[] ask = Payload(100);
                ch.Send(f, ask);
                Message atServer;
                if (!server.TryReceive(Env.Long, out atServer))
                    Assert.Fail("the listener received nothing");
                Same("message at the listener", ask, atServer.Data);
                byte[] answer = Payload(33);
                server.Send(atServer.Flow, answer);
                Same("the listener's answer", answer, Recv("the listener's answer").Data);

                server.Abort();
                FlowEnds(c, f);
            }
            finally
            {
                server.Dispose();
            }
        }

        private void PeerClosesAfterSending(ConformanceCase c)
        {
            Channel server = Listener(c.Port);
            Flow f;
            try
            {
                f = Connect((ushort)c.Port);
                byte[] ask = Encoding.ASCII.GetBytes("ping");
                ch.Send(f, ask);
                Message atServer;
                if (!server.TryReceive(Env.Long, out atServer))
                    Assert.Fail("the listener received nothing");
                Same("message at the listener", ask, atServer.Data);
                foreach (int size in c.Sizes)
                    server.Send(atServer.Flow, Payload(size));
            }
            finally
            {
                server.Dispose(); // graceful, right after the sends
            }
            foreach (int size in c.Sizes)
            {
                string what = "the listener's message of " + size + " bytes";
                Message got = Recv(what);
                Assert.AreEqual(f.Reversed, got.Flow, "{0}: on the flow", what);
                Same(what, Payload(size), got.Data);
            }
            FlowEnds(c, f);
        }

        /// <summary>
        /// After the peer went away: no message arrives on <paramref name="f"/> and a send fails
        /// with the case's error, and the case's flow event (if it names one) arrives. A receive
        /// does not throw for the end: it returns nothing (closing this side once the peer closed).
        /// </summary>
        private void FlowEnds(ConformanceCase c, Flow f)
        {
            Message late = null;
            Exception re = Catch(() => ch.TryReceive(TimeSpan.FromMilliseconds(500), out late));
            if (late != null)
                Assert.Fail("a {0}-byte message arrived after the peer went away", late.Data.Length);
            if (re != null)
                WantError("receive after the peer went away", c.Error, re);
            WantEvent(c, f);
            DateTime deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (true)
            {
                Exception e = Catch(() => ch.Send(f, new byte[] { 1 }));
                if (e != null)
                {
                    WantError("send after the peer went away", c.Error, e);
                    break;
                }
                if (DateTime.UtcNow > deadline)
                    Assert.Fail("sends still succeed 10 s after the peer's channel was closed");
                Thread.Sleep(20);
            }
        }

        /// <summary>
        /// The case's "event" (if it names one) arrives for <paramref name="f"/> as a flow event
        /// (Channel.TryGetFlowEvent; events of other flows and earlier cases are skipped).
        /// </summary>
        private void WantEvent(ConformanceCase c, Flow f)
        {
            if (string.IsNullOrEmpty(c.Event))
                return;
            FlowEventKind want;
            switch (c.Event)
            {
                case "peer_closed": want = FlowEventKind.PeerClosed; break;
                case "reset": want = FlowEventKind.Reset; break;
                case "timed_out": want = FlowEventKind.TimedOut; break;
                case "refused": want = FlowEventKind.Refused; break;
                case "closed": want = FlowEventKind.Closed; break;
                case "request_failed": want = FlowEventKind.RequestFailed; break;
                default: Assert.Fail("unknown event name \"{0}\" in case {1}", c.Event, c.Name); return;
            }
            var seen = new List<string>();
            DateTime deadline = DateTime.UtcNow + Env.Guard;
            while (DateTime.UtcNow < deadline)
            {
                FlowEventArgs ev;
                if (ch.TryGetFlowEvent(out ev))
                {
                    if (ev.Flow.Equals(f.Reversed) && ev.Kind == want)
                        return;
                    seen.Add(ev.ToString());
                    continue;
                }
                Message late;
                if (ch.TryReceive(TimeSpan.FromMilliseconds(20), out late))
                    Assert.Fail("a {0}-byte message arrived after the peer went away", late.Data.Length);
            }
            Assert.Fail("no {0} event for {1} (events seen: {2})", c.Event, f.Reversed, string.Join("; ", seen));
        }

        private void Kv(ConformanceCase c)
        {
            Flow f = Connect(PortOf(c.App, c.Name));
            for (int i = 0; i < c.Steps.Length; i++)
            {
                ConformanceStep s = c.Steps[i];
                string what = "step " + i + " (request " + s.Request + ")";
                ch.Send(f, Hex(s.Request));
                KvResponse(what, s, Recv(what).Data);
            }
        }

        private void KvPipelined(ConformanceCase c)
        {
            Flow f = Connect(PortOf(c.App, c.Name));
            for (int phase = 0; phase < 2; phase++)
            {
                bool set = phase == 0;
                for (int i = 0; i < c.Count; i++)
                {
                    byte[] key = Encoding.UTF8.GetBytes(c.KeyPrefix + i.ToString(System.Globalization.CultureInfo.InvariantCulture));
                    byte[] value = set ? BitConverter.GetBytes((uint)i) : new byte[0];
                    ch.Send(f, KvRequest(set ? (byte)2 : (byte)1, (uint)i, key, value));
                }
                for (int i = 0; i < c.Count; i++)
                {
                    string what = (set ? "SET " : "GET ") + i;
                    var want = new ConformanceStep
                    {
                        Status = "ok",
                        Id = i,
                        Body = set ? "" : ToHex(BitConverter.GetBytes((uint)i), 0),
                    };
                    KvResponse(what, want, Recv(what).Data);
                }
            }
        }
    }
}
