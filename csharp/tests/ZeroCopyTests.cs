// NUnit tests of zero-copy send (Channel.Loan -> SendLoan) and receive (Channel.ReceiveView ->
// MessageView) against the echo server ci/csharp.sh starts.
using System;
using System.IO;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using NUnit.Framework;

namespace Machnet.Tests
{
    [TestFixture]
    public class ZeroCopyTests
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

        private void LoanSend(byte[] data)
        {
            using (SendLoan loan = ch.Loan(flow, data.Length))
            {
                Assert.AreEqual(data.Length, loan.Length);
                loan.CopyFrom(data);
                loan.Commit(data.Length);
            }
        }

        private void ExpectView(byte[] expected)
        {
            using (MessageView view = ch.ReceiveView(Env.Long))
            {
                Assert.AreEqual(flow.Reversed, view.Flow, "the reply comes from the peer");
                Env.AssertSameBytes(expected, view.ToArray());
            }
        }

        private void ExpectEcho(string expected)
        {
            Message m = ch.Receive(Env.Long);
            Assert.AreEqual(expected, Encoding.ASCII.GetString(m.Data));
        }

        [TestCase(1)]
        [TestCase(64 * 1024)]
        [TestCase(8 * 1024 * 1024)]
        public void ZeroCopyEchoIsByteIdentical(int size)
        {
            byte[] sent = Env.Pattern(size, (uint)size + 7);
            LoanSend(sent);
            using (MessageView view = ch.ReceiveView(Env.Long))
            {
                Assert.AreEqual(flow.Reversed, view.Flow);
                Assert.AreEqual(size, view.Length);
                // Through the indexer and through a copy.
                for (int i = 0; i < size; i += 1 + i / 64)
                    if (view[i] != sent[i])
                        Assert.Fail("byte {0} differs", i);
                Env.AssertSameBytes(sent, view.ToArray());
            }
        }

        [Test]
        public void WindowOfLoansArrivesInOrder()
        {
            const int window = 16;
            for (int i = 0; i < window; i++)
                LoanSend(Env.Pattern(4096 + i, (uint)i));
            for (int i = 0; i < window; i++)
                ExpectView(Env.Pattern(4096 + i, (uint)i));
            MessageView none;
            Assert.IsFalse(ch.TryReceiveView(TimeSpan.Zero, out none));
            Assert.IsNull(none);
        }

        [Test]
        public void StreamsWriteALoanAndReadAView()
        {
            byte[] sent = Env.Pattern(10000, 3);
            SendLoan loan = ch.Loan(flow, 20000);
            using (UnmanagedMemoryStream s = loan.AsStream())
            {
                Assert.IsTrue(s.CanWrite);
                s.Write(sent, 0, sent.Length);
            }
            loan.Commit(sent.Length);
            using (MessageView view = ch.ReceiveView(Env.Long))
            using (UnmanagedMemoryStream s = view.AsStream())
            {
                Assert.IsFalse(s.CanWrite);
                var got = new byte[sent.Length + 1];
                int n = 0, r;
                while ((r = s.Read(got, n, got.Length - n)) > 0)
                    n += r;
                Assert.AreEqual(sent.Length, n);
                Array.Resize(ref got, n);
                Env.AssertSameBytes(sent, got);
            }
        }

        [Test]
        public void CancelledLoanSendsNothingAndRefusesAccess()
        {
            SendLoan loan = ch.Loan(flow, 100);
            for (int i = 0; i < 100; i++)
                loan[i] = (byte)'X';
            UnmanagedMemoryStream stream = loan.AsStream();
            loan.Cancel();
            Assert.IsFalse(loan.IsLive);
            Assert.Throws<ObjectDisposedException>(() => { var b = loan[0]; });
            Assert.Throws<ObjectDisposedException>(() => loan[0] = 1);
            Assert.Throws<ObjectDisposedException>(() => { var p = loan.Pointer; });
            Assert.Throws<ObjectDisposedException>(() => loan.CopyFrom(new byte[1]));
            Assert.Throws<ObjectDisposedException>(() => stream.WriteByte(1));
            Assert.Throws<ObjectDisposedException>(() => loan.AsStream());
            Assert.Throws<ObjectDisposedException>(() => loan.Cancel());
            Assert.Throws<ObjectDisposedException>(() => loan.Commit(1));
            loan.Dispose(); // nothing to do

            // A loan disposed without a commit (a using block left by an exception) is cancelled.
            Assert.Throws<InvalidOperationException>(() =>
            {
                using (SendLoan l = ch.Loan(flow, 50))
                {
                    l.CopyFrom(Encoding.ASCII.GetBytes("never sent"));
                    throw new InvalidOperationException("the write failed");
                }
            });

            ch.Send(flow, Encoding.ASCII.GetBytes("after cancel"));
            ExpectEcho("after cancel"); // a cancelled message would have come first
        }

        [Test]
        public void PartialCommitSendsOnlyThoseBytes()
        {
            SendLoan loan = ch.Loan(flow, 200);
            loan.CopyFrom(Encoding.ASCII.GetBytes("partial"));
            for (int i = 7; i < 200; i++)
                loan[i] = (byte)'Z';
            loan.Commit(7);
            Assert.Throws<ObjectDisposedException>(() => loan.Commit(7));
            ExpectEcho("partial");
        }

        [TestCase(0)]
        [TestCase(-1)]
        [TestCase(17)]
        public void CommitOutOfRangeCancelsTheLoan(int used)
        {
            SendLoan loan;
            Assert.IsTrue(ch.TryLoan(flow, 16, out loan));
            loan.CopyFrom(Encoding.ASCII.GetBytes("BADBADBADBADBADB"));
            var e = Assert.Throws<MachnetArgumentException>(() => loan.Commit(used));
            Assert.AreEqual("ERR_MACHNET_INVALID_ARGUMENT", e.CodeName);
            Assert.AreEqual("machnet_commit", e.Operation);
            Assert.IsFalse(loan.IsLive);
            ch.Send(flow, Encoding.ASCII.GetBytes("next"));
            ExpectEcho("next");
        }

        [Test]
        public void LoanValidatesItsArguments()
        {
            Assert.Throws<MachnetArgumentException>(() => ch.Loan(flow, 0));
            Assert.Throws<MessageSizeException>(() => ch.Loan(flow, Sidecar.MaxMessageLength + 1));
            Assert.Throws<FlowClosedException>(() => ch.Loan(new Flow(1, 2, 3, 4), 8));
            using (SendLoan loan = ch.Loan(flow, 8))
            {
                Assert.Throws<ArgumentOutOfRangeException>(() => { var b = loan[8]; });
                Assert.Throws<ArgumentOutOfRangeException>(() => loan.CopyFrom(new byte[9]));
                Assert.Throws<ArgumentOutOfRangeException>(() => loan.CopyFrom(new byte[4], 0, 5, 4));
            }
        }

        [Test]
        public void TheHoldingThreadIsBusyAndOtherThreadsWait()
        {
            SendLoan loan = ch.Loan(flow, 5);
            var busy = Assert.Throws<MachnetException>(() => ch.Send(flow, new byte[] { 1 }));
            Assert.AreEqual(16, busy.Errno); // EBUSY
            Assert.AreEqual("ERR_MACHNET_WOULD_BLOCK", busy.CodeName);
            SendLoan second;
            Assert.AreEqual(16, Assert.Throws<MachnetException>(() => ch.TryLoan(flow, 5, out second)).Errno);
            Assert.AreEqual(16, Assert.Throws<MachnetException>(() => ch.Loan(flow, 5)).Errno);
            // Another thread's send waits for the loan and goes out after it.
            Task other = Task.Factory.StartNew(() => ch.Send(flow, Encoding.ASCII.GetBytes("second")),
                TaskCreationOptions.LongRunning);
            loan.CopyFrom(Encoding.ASCII.GetBytes("first"));
            loan.Commit(5);
            Assert.IsTrue(other.Wait(Env.Guard), "the other thread's send finished");
            ExpectEcho("first");
            ExpectEcho("second");
        }

        [Test]
        public void ViewRules()
        {
            foreach (string m in new[] { "one", "two", "three" })
                ch.Send(flow, Encoding.ASCII.GetBytes(m));
            MessageView view = ch.ReceiveView(Env.Long);
            Assert.AreEqual("one", Encoding.ASCII.GetString(view.ToArray()));
            UnmanagedMemoryStream stream = view.AsStream();
            // A second zero-copy receive: EBUSY (a zero timeout never waits; the holder would wait for itself).
            MessageView other;
            Assert.AreEqual(16, Assert.Throws<MachnetException>(() => ch.TryReceiveView(TimeSpan.Zero, out other)).Errno);
            Assert.AreEqual(16, Assert.Throws<MachnetException>(() => ch.ReceiveView(Env.Guard)).Errno);
            // Copying receives go on and take the messages after it; the view is intact.
            ExpectEcho("two");
            Assert.AreEqual("one", Encoding.ASCII.GetString(view.ToArray()));
            view.Release();
            Assert.IsFalse(view.IsLive);
            Assert.AreEqual(3, view.Length);
            // Released twice: a clear error, no crash; every access refused.
            Assert.Throws<ObjectDisposedException>(() => view.Release());
            Assert.Throws<ObjectDisposedException>(() => view.Release());
            Assert.Throws<ObjectDisposedException>(() => { var b = view[0]; });
            Assert.Throws<ObjectDisposedException>(() => { var p = view.Pointer; });
            Assert.Throws<ObjectDisposedException>(() => view.ToArray());
            Assert.Throws<ObjectDisposedException>(() => stream.ReadByte());
            view.Dispose(); // nothing to do
            ExpectView(Encoding.ASCII.GetBytes("three"));
        }

        [Test]
        public void AnotherThreadsReceiveViewWaitsForTheRelease()
        {
            ch.Send(flow, Encoding.ASCII.GetBytes("first"));
            ch.Send(flow, Encoding.ASCII.GetBytes("second"));
            MessageView view = ch.ReceiveView(Env.Long);
            Task<string> other = Task.Factory.StartNew(() =>
            {
                using (MessageView v = ch.ReceiveView(Env.Long))
                    return Encoding.ASCII.GetString(v.ToArray());
            }, TaskCreationOptions.LongRunning);
            Assert.IsFalse(other.Wait(50), "a second view while one is out");
            Assert.AreEqual("first", Encoding.ASCII.GetString(view.ToArray()));
            view.Release();
            Assert.IsTrue(other.Wait(Env.Guard));
            Assert.AreEqual("second", other.Result);

            // Waiting for another thread's release ends with its timeout.
            ch.Send(flow, Encoding.ASCII.GetBytes("third"));
            view = ch.ReceiveView(Env.Long);
            Task<bool> timed = Task.Factory.StartNew(() =>
            {
                MessageView v;
                return ch.TryReceiveView(TimeSpan.FromMilliseconds(100), out v);
            }, TaskCreationOptions.LongRunning);
            Assert.IsTrue(timed.Wait(Env.Guard));
            Assert.IsFalse(timed.Result);
            view.Release();
        }

        [Test]
        public void DisposingTheChannelEndsLoansAndViews()
        {
            ch.Send(flow, Encoding.ASCII.GetBytes("held"));
            MessageView view = ch.ReceiveView(Env.Long);
            ch.Dispose();
            Assert.IsFalse(view.IsLive);
            Assert.Throws<ObjectDisposedException>(() => { var b = view[0]; });
            view.Release(); // the channel's disposal gave it back already: nothing to do, no crash
            view.Dispose();

            ch = Env.Open();
            flow = ch.Connect(Env.LocalIp, Env.PeerIp, Env.EchoPort);
            SendLoan loan = ch.Loan(flow, 8);
            ch.Dispose();
            Assert.Throws<ObjectDisposedException>(() => loan[0] = 1);
            Assert.Throws<ObjectDisposedException>(() => loan.Commit(8));
            loan.Dispose();
        }
    }
}
