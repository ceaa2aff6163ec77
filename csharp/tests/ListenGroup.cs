// A listen-group check shared by the tests: docs/CHANNEL.md §2.
using System;
using System.Collections.Generic;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using NUnit.Framework;

namespace Machnet.Tests
{
    internal static class ListenGroup
    {
        /// <summary>
        /// Every channel in <paramref name="members"/> listens on <paramref name="port"/> of the
        /// tests' sidecar. Connects <paramref name="n"/> flows from the peer sidecar, each carrying
        /// one message: every message must reach exactly one member, which answers on the flow it
        /// accepted (the other members cannot send on it), and every answer must come back on its
        /// flow. Which member (engine) accepts which flow is not asserted: the sidecar's suite
        /// does that. Returns how many flows each member accepted.
        /// </summary>
        internal static int[] Exchange(Channel[] members, ushort port, int n)
        {
            Channel client = Env.Open(peer: true);
            Sidecar.Init(Env.Sock);
            using (client)
            using (var stop = new CancellationTokenSource())
            {
                var flows = new Flow[n];
                for (int i = 0; i < n; i++)
                {
                    flows[i] = client.Connect(Env.PeerIp, Env.LocalIp, port, Env.Guard);
                    client.Send(flows[i], Encoding.ASCII.GetBytes("flow " + i));
                }
                var counts = new int[members.Length];
                var errors = new List<string>();
                var servers = new Task[members.Length];
                for (int m = 0; m < members.Length; m++)
                {
                    int me = m;
                    servers[m] = Task.Factory.StartNew(() =>
                    {
                        try
                        {
                            while (!stop.IsCancellationRequested)
                            {
                                Message msg;
                                if (!members[me].TryReceive(TimeSpan.FromMilliseconds(50), out msg))
                                    continue;
                                for (int o = 0; o < members.Length; o++)
                                {
                                    if (o == me)
                                        continue;
                                    try
                                    {
                                        members[o].Send(msg.Flow, Encoding.ASCII.GetBytes("not mine"));
                                        lock (errors)
                                            errors.Add("member " + o + " could send on the flow member " + me + " accepted");
                                    }
                                    catch (MachnetException)
                                    {
                                        // expected: the flow is not on that channel
                                    }
                                }
                                Interlocked.Increment(ref counts[me]);
                                members[me].Send(msg.Flow, Encoding.ASCII.GetBytes("re: " + Encoding.ASCII.GetString(msg.Data)));
                            }
                        }
                        catch (Exception e)
                        {
                            lock (errors)
                                errors.Add("member " + me + ": " + e);
                        }
                    }, TaskCreationOptions.LongRunning);
                }
                try
                {
                    var answered = new bool[n];
                    for (int got = 0; got < n; got++)
                    {
                        Message reply;
                        if (!client.TryReceive(Env.Long, out reply))
                            Assert.Fail("after {0} of {1} answers: none came; {2}", got, n, string.Join("; ", errors));
                        int i = Array.FindIndex(flows, f => f.Reversed.Equals(reply.Flow));
                        Assert.IsTrue(i >= 0, "an answer on an unknown flow " + reply.Flow);
                        Assert.IsFalse(answered[i], "flow " + i + " answered twice");
                        Assert.AreEqual("re: flow " + i, Encoding.ASCII.GetString(reply.Data));
                        answered[i] = true;
                    }
                }
                finally
                {
                    stop.Cancel();
                    Task.WaitAll(servers, Env.Guard);
                }
                lock (errors)
                    Assert.IsEmpty(errors, string.Join("; ", errors));
                Message extra;
                Assert.IsFalse(client.TryReceive(TimeSpan.Zero, out extra), "an extra message");
                return counts;
            }
        }
    }
}
