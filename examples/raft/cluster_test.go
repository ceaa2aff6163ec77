package machnetraft

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

const (
	electionWait = 30 * time.Second // generous: shared 2-core machines
	applyWait    = 30 * time.Second
)

// value returns a random value of n bytes.
func value(r *rand.Rand, n int) []byte {
	v := make([]byte, n)
	r.Read(v)
	return v
}

// applyAll applies the commands on leader, one after another, and fails the test on any error.
func applyAll(t *testing.T, leader *Node, cmds [][]byte) {
	t.Helper()
	for i, c := range cmds {
		f := leader.Raft.Apply(c, 10*time.Second)
		if err := f.Error(); err != nil {
			t.Fatalf("apply %d on %s: %v", i, leader.ID, err)
		}
		if resp := f.Response(); resp != nil {
			t.Fatalf("apply %d: fsm returned %v", i, resp)
		}
	}
}

// checkLog fails unless the node applied exactly want, in order (compared byte for byte).
func checkLog(t *testing.T, n *Node, want [][]byte) {
	t.Helper()
	got := n.FSM.Applied()
	if len(got) != len(want) {
		t.Fatalf("%s applied %d entries, want %d", n.ID, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i].Data, want[i]) {
			t.Fatalf("%s: entry %d (index %d) differs from the committed command", n.ID, i, got[i].Index)
		}
		if i > 0 && got[i].Index <= got[i-1].Index {
			t.Fatalf("%s: entry %d index %d not after %d", n.ID, i, got[i].Index, got[i-1].Index)
		}
	}
}

// checkIdentical fails unless every node's state (applied log and map) is byte-identical.
func checkIdentical(t *testing.T, nodes []*Node) {
	t.Helper()
	ref := nodes[0].FSM.Dump()
	for _, n := range nodes[1:] {
		if d := n.FSM.Dump(); !bytes.Equal(d, ref) {
			t.Fatalf("state of %s (%d bytes) differs from %s (%d bytes)", n.ID, len(d), nodes[0].ID, len(ref))
		}
	}
}

func commands(r *rand.Rand, prefix string, n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		key := fmt.Sprintf("%s%05d", prefix, r.Intn(n)) // some keys repeat: later writes win
		out[i] = SetCommand(key, value(r, size-3-len(key)))
	}
	return out
}

func startMachnetCluster(t *testing.T, sc []sidecar, conf func(*raft.Config)) []*Node {
	t.Helper()
	trans := make([]*Transport, len(sc))
	servers := make([]raft.Server, len(sc))
	for i := range sc {
		trans[i] = newTransport(t, sc[i])
		servers[i] = raft.Server{Suffrage: raft.Voter, ID: raft.ServerID("n" + strconv.Itoa(i+1)), Address: trans[i].LocalAddr()}
	}
	nodes := make([]*Node, len(sc))
	for i := range sc {
		c := RaftConfig(servers[i].ID, os.Stderr)
		if conf != nil {
			conf(c)
		}
		n, err := StartNode(c, trans[i], servers, true)
		if err != nil {
			t.Fatalf("start %s: %v", servers[i].ID, err)
		}
		nodes[i] = n
		t.Cleanup(func() { _ = n.Stop() })
	}
	return nodes
}

// TestClusterFailover: three nodes on three sidecars elect one leader; 200 commands replicate
// to all (byte-identical state); the leader is shut down and its transport closed; the other
// two elect a new leader, still hold every committed command, and commit 100 more.
func TestClusterFailover(t *testing.T) {
	sc := sidecars(t)
	r := rng(t)
	nodes := startMachnetCluster(t, sc, nil)
	leader, err := WaitLeader(nodes, electionWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %s", leader.ID)

	first := commands(r, "a", 200, 80)
	applyAll(t, leader, first)
	if err := WaitApplied(nodes, len(first), applyWait); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		checkLog(t, n, first)
	}
	checkIdentical(t, nodes)

	if err := leader.Stop(); err != nil {
		t.Fatalf("stopping leader %s: %v", leader.ID, err)
	}
	var rest []*Node
	for _, n := range nodes {
		if n != leader {
			rest = append(rest, n)
		}
	}
	newLeader, err := WaitLeader(rest, electionWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("old leader %s stopped; new leader %s", leader.ID, newLeader.ID)
	for _, n := range rest {
		checkLog(t, n, first)
	}

	second := commands(r, "b", 100, 80)
	applyAll(t, newLeader, second)
	all := append(append([][]byte(nil), first...), second...)
	if err := WaitApplied(rest, len(all), applyWait); err != nil {
		t.Fatal(err)
	}
	for _, n := range rest {
		checkLog(t, n, all)
	}
	checkIdentical(t, rest)
}

// TestSnapshotInstall: a single-node cluster applies commands (some of ~1 MiB, so the snapshot
// spans several Machnet messages), snapshots and truncates its log; two new voters can only
// catch up through InstallSnapshot, and end byte-identical.
func TestSnapshotInstall(t *testing.T) {
	sc := sidecars(t)
	r := rng(t)
	trans := make([]*Transport, 3)
	for i := range trans {
		trans[i] = newTransport(t, sc[i])
	}
	ids := []raft.ServerID{"s1", "s2", "s3"}
	conf := func(id raft.ServerID) *raft.Config {
		c := RaftConfig(id, os.Stderr)
		c.TrailingLogs = 5
		c.SnapshotThreshold = 1 << 20 // only the explicit snapshot below
		// Under -race on two cores, both followers restoring a multi-MiB snapshot in this one
		// process starve the goroutines that answer heartbeats: answers then took 100 ms to 1 s
		// (without -race: none over 100 ms), and a 500 ms lease cost the leader its leadership
		// during AddVoter. This test is about snapshot transfer, not lease timing.
		c.HeartbeatTimeout = 3 * time.Second
		c.ElectionTimeout = 3 * time.Second
		c.LeaderLeaseTimeout = 3 * time.Second
		return c
	}
	first, err := StartNode(conf(ids[0]), trans[0],
		[]raft.Server{{Suffrage: raft.Voter, ID: ids[0], Address: trans[0].LocalAddr()}}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = first.Stop() })
	if _, err := WaitLeader([]*Node{first}, electionWait); err != nil {
		t.Fatal(err)
	}
	cmds := commands(r, "k", 100, 80)
	for i := 0; i < 3; i++ {
		cmds = append(cmds, SetCommand(fmt.Sprintf("big%d", i), value(r, 900<<10)))
	}
	cmds = append(cmds, commands(r, "m", 20, 80)...)
	applyAll(t, first, cmds)
	if err := first.Raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}

	nodes := []*Node{first}
	for i := 1; i < 3; i++ {
		n, err := StartNode(conf(ids[i]), trans[i], nil, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Stop() })
		if err := first.Raft.AddVoter(ids[i], trans[i].LocalAddr(), 0, 30*time.Second).Error(); err != nil {
			t.Fatalf("AddVoter %s: %v", ids[i], err)
		}
		nodes = append(nodes, n)
	}
	if err := WaitApplied(nodes, len(cmds), applyWait); err != nil {
		t.Fatal(err)
	}
	// The FSM shows the restored state a moment before raft records the installed snapshot.
	for _, n := range nodes[1:] {
		deadline := time.Now().Add(5 * time.Second)
		for s := n.Raft.Stats()["last_snapshot_index"]; s == "0" || s == ""; s = n.Raft.Stats()["last_snapshot_index"] {
			if time.Now().After(deadline) {
				t.Fatalf("%s caught up without installing a snapshot (last_snapshot_index %q)", n.ID, s)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	more := commands(r, "z", 10, 80)
	applyAll(t, first, more)
	all := append(cmds, more...)
	if err := WaitApplied(nodes, len(all), applyWait); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		checkLog(t, n, all)
	}
	checkIdentical(t, nodes)
}
