package machnetraft

// Cluster scenarios over Machnet (issue 20): leadership transfer, membership change (add a
// voter, remove a follower, remove the leader), and a snapshot sent to a follower that lagged
// behind a partition made with raft.WithPeers. TestClusterFailover and TestKillLeaderProcess
// cover leader failure. Each is repeatable (-count=N); CI runs each once.

import (
	"os"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// without returns nodes minus drop.
func without(nodes []*Node, drop ...*Node) []*Node {
	var out []*Node
next:
	for _, n := range nodes {
		for _, d := range drop {
			if n == d {
				continue next
			}
		}
		out = append(out, n)
	}
	return out
}

// nodeByID returns the node with id.
func nodeByID(t *testing.T, nodes []*Node, id raft.ServerID) *Node {
	t.Helper()
	for _, n := range nodes {
		if n.ID == id {
			return n
		}
	}
	t.Fatalf("no node %s", id)
	return nil
}

// TestClusterLeadershipTransfer: LeadershipTransfer hands leadership to another node (over
// TimeoutNow); LeadershipTransferToServer to a chosen one; commands applied before, between and
// after the transfers end on every node, in order.
func TestClusterLeadershipTransfer(t *testing.T) {
	sc := sidecars(t)
	r := rng(t)
	nodes := startMachnetCluster(t, sc, nil)
	leader, err := WaitLeader(nodes, electionWait)
	if err != nil {
		t.Fatal(err)
	}
	all := commands(r, "a", 50, 80)
	applyAll(t, leader, all)

	if err := leader.Raft.LeadershipTransfer().Error(); err != nil {
		t.Fatalf("LeadershipTransfer from %s: %v", leader.ID, err)
	}
	second, err := WaitLeader(nodes, electionWait)
	if err != nil {
		t.Fatal(err)
	}
	if second == leader {
		t.Fatalf("leadership transfer from %s: still the leader", leader.ID)
	}
	more := commands(r, "b", 50, 80)
	applyAll(t, second, more)
	all = append(all, more...)

	// To the one node that has not led yet.
	target := without(nodes, leader, second)[0]
	addr := raft.ServerAddress(target.Trans.LocalAddr())
	if err := second.Raft.LeadershipTransferToServer(target.ID, addr).Error(); err != nil {
		t.Fatalf("LeadershipTransferToServer %s -> %s: %v", second.ID, target.ID, err)
	}
	third, err := WaitLeader(nodes, electionWait)
	if err != nil {
		t.Fatal(err)
	}
	if third != target {
		t.Fatalf("leadership transfer to %s: leader is %s", target.ID, third.ID)
	}
	t.Logf("leader %s -> %s -> %s", leader.ID, second.ID, third.ID)
	more = commands(r, "c", 50, 80)
	applyAll(t, third, more)
	all = append(all, more...)
	if err := WaitApplied(nodes, len(all), applyWait); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		checkLog(t, n, all)
	}
	checkIdentical(t, nodes)
}

// TestClusterMembershipChange: a fourth voter joins a running 3-node cluster and catches up;
// a follower is removed (it stops receiving entries); then the leader removes itself and the
// remaining two elect a leader among them and go on committing.
func TestClusterMembershipChange(t *testing.T) {
	sc := sidecars(t)
	r := rng(t)
	nodes := startMachnetCluster(t, sc, nil)
	leader, err := WaitLeader(nodes, electionWait)
	if err != nil {
		t.Fatal(err)
	}
	all := commands(r, "a", 50, 80)
	applyAll(t, leader, all)

	// Join: n4 on sidecar a (a second transport there).
	tr4 := newTransport(t, sc[0])
	n4, err := StartNode(RaftConfig("n4", os.Stderr), tr4, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n4.Stop() })
	if err := leader.Raft.AddVoter("n4", tr4.LocalAddr(), 0, 30*time.Second).Error(); err != nil {
		t.Fatalf("AddVoter n4: %v", err)
	}
	nodes = append(nodes, n4)
	more := commands(r, "b", 50, 80)
	applyAll(t, leader, more)
	all = append(all, more...)
	if err := WaitApplied(nodes, len(all), applyWait); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		checkLog(t, n, all)
	}

	// Remove a follower: it keeps what it had and gets nothing more.
	gone := without(nodes, leader, n4)[0]
	if err := leader.Raft.RemoveServer(gone.ID, 0, 30*time.Second).Error(); err != nil {
		t.Fatalf("RemoveServer %s: %v", gone.ID, err)
	}
	nodes = without(nodes, gone)
	more = commands(r, "c", 50, 80)
	applyAll(t, leader, more)
	all = append(all, more...)
	if err := WaitApplied(nodes, len(all), applyWait); err != nil {
		t.Fatal(err)
	}
	if got := gone.FSM.Len(); got >= len(all) {
		t.Fatalf("removed %s applied %d entries, as many as the cluster's %d", gone.ID, got, len(all))
	}
	if err := gone.Stop(); err != nil {
		t.Fatalf("stopping removed %s: %v", gone.ID, err)
	}

	// The leader removes itself; the other two (n4 and one original) carry on.
	if err := leader.Raft.RemoveServer(leader.ID, 0, 30*time.Second).Error(); err != nil {
		t.Fatalf("RemoveServer %s (the leader itself): %v", leader.ID, err)
	}
	rest := without(nodes, leader)
	next, err := WaitLeader(rest, electionWait)
	if err != nil {
		t.Fatal(err)
	}
	cfg := next.Raft.GetConfiguration()
	if err := cfg.Error(); err != nil {
		t.Fatal(err)
	}
	var ids []raft.ServerID
	for _, s := range cfg.Configuration().Servers {
		ids = append(ids, s.ID)
	}
	if len(ids) != 2 || (ids[0] != rest[0].ID && ids[0] != rest[1].ID) || (ids[1] != rest[0].ID && ids[1] != rest[1].ID) {
		t.Fatalf("configuration after the removals: %v, want %s and %s", ids, rest[0].ID, rest[1].ID)
	}
	t.Logf("added n4, removed %s and leader %s; new leader %s", gone.ID, leader.ID, next.ID)
	more = commands(r, "d", 50, 80)
	applyAll(t, next, more)
	all = append(all, more...)
	if err := WaitApplied(rest, len(all), applyWait); err != nil {
		t.Fatal(err)
	}
	for _, n := range rest {
		checkLog(t, n, all)
	}
	checkIdentical(t, rest)
}

// TestClusterSnapshotToLaggingFollower: a follower cut off with raft.WithPeers (Disconnect on
// the others, DisconnectAll on it) misses entries that the leader then compacts into a
// snapshot; once reconnected it can only catch up through InstallSnapshot, and does.
func TestClusterSnapshotToLaggingFollower(t *testing.T) {
	sc := sidecars(t)
	r := rng(t)
	nodes := startMachnetCluster(t, sc, func(c *raft.Config) {
		c.TrailingLogs = 10
		c.SnapshotThreshold = 1 << 20 // only the explicit snapshot below
	})
	leader, err := WaitLeader(nodes, electionWait)
	if err != nil {
		t.Fatal(err)
	}
	all := commands(r, "a", 30, 80)
	applyAll(t, leader, all)
	if err := WaitApplied(nodes, len(all), applyWait); err != nil {
		t.Fatal(err)
	}

	lag := without(nodes, leader)[0]
	lagAddr := lag.Trans.LocalAddr()
	lag.Trans.(*Transport).DisconnectAll()
	for _, n := range without(nodes, lag) {
		n.Trans.(*Transport).Disconnect(lagAddr)
	}
	more := commands(r, "b", 200, 200)
	applyAll(t, leader, more) // committed by the other two
	all = append(all, more...)
	if err := leader.Raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot on %s: %v", leader.ID, err)
	}
	if got := lag.FSM.Len(); got >= len(all) {
		t.Fatalf("cut-off %s applied %d entries while disconnected", lag.ID, got)
	}
	before := lag.Raft.Stats()["last_snapshot_index"]

	for _, n := range without(nodes, lag) {
		n.Trans.(*Transport).Connect(lagAddr, nil)
		lag.Trans.(*Transport).Connect(n.Trans.LocalAddr(), nil)
	}
	if err := WaitApplied(nodes, len(all), applyWait); err != nil {
		t.Fatal(err)
	}
	if after := lag.Raft.Stats()["last_snapshot_index"]; after == before {
		// The FSM shows the restored state a moment before raft records the snapshot.
		deadline := time.Now().Add(5 * time.Second)
		for ; after == before; after = lag.Raft.Stats()["last_snapshot_index"] {
			if time.Now().After(deadline) {
				t.Fatalf("%s caught up without installing a snapshot (last_snapshot_index %s)", lag.ID, after)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	leader, err = WaitLeader(nodes, electionWait)
	if err != nil {
		t.Fatal(err)
	}
	more = commands(r, "c", 20, 80)
	applyAll(t, leader, more)
	all = append(all, more...)
	if err := WaitApplied(nodes, len(all), applyWait); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		checkLog(t, n, all)
	}
	checkIdentical(t, nodes)
	t.Logf("%s missed 200 entries compacted into a snapshot and caught up", lag.ID)
}
