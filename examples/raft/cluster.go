package machnetraft

import (
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// RaftConfig is the raft configuration the examples use: generous timeouts, because the tests
// run three nodes and three sidecars on small shared machines (they assert outcomes, not
// speed).
func RaftConfig(id raft.ServerID, logOutput io.Writer) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = id
	c.HeartbeatTimeout = time.Second
	c.ElectionTimeout = time.Second
	c.LeaderLeaseTimeout = 500 * time.Millisecond
	c.CommitTimeout = 50 * time.Millisecond
	c.Logger = hclog.New(&hclog.LoggerOptions{
		Name:   "raft-" + string(id),
		Level:  hclog.Warn,
		Output: logOutput,
	})
	return c
}

// Node is one raft server with the KV state machine and in-memory log, stable and snapshot
// stores.
type Node struct {
	ID    raft.ServerID
	Raft  *raft.Raft
	FSM   *KV
	Trans raft.Transport
}

// StartNode starts a raft server; with bootstrap, it first bootstraps the stores with servers
// (every node of a new cluster may do so with the same list).
func StartNode(conf *raft.Config, trans raft.Transport, servers []raft.Server, bootstrap bool) (*Node, error) {
	logs := raft.NewInmemStore()
	snaps := raft.NewInmemSnapshotStore()
	fsm := NewKV()
	if bootstrap {
		err := raft.BootstrapCluster(conf, logs, logs, snaps, trans, raft.Configuration{Servers: servers})
		if err != nil {
			return nil, err
		}
	}
	r, err := raft.NewRaft(conf, fsm, logs, logs, snaps, trans)
	if err != nil {
		return nil, err
	}
	return &Node{ID: conf.LocalID, Raft: r, FSM: fsm, Trans: trans}, nil
}

// Stop shuts raft down and closes the transport (if it can be closed). Raft's shutdown waits
// for RPCs in flight; those to a peer whose process or transport went away fail at once, but
// one to a peer whose whole machine (sidecar) is gone waits for the flow's timeout, so the
// transport is closed (failing such RPCs) if the shutdown takes more than a second.
func (n *Node) Stop() error {
	f := n.Raft.Shutdown()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	c, canClose := n.Trans.(raft.WithClose)
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Second):
		if canClose {
			_ = c.Close()
		}
		err = <-done
	}
	if canClose {
		if cerr := c.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// WaitLeader waits until exactly one of nodes is leader and every node agrees on it, and
// returns it.
func WaitLeader(nodes []*Node, timeout time.Duration) (*Node, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var leader *Node
		count := 0
		for _, n := range nodes {
			if n.Raft.State() == raft.Leader {
				leader = n
				count++
			}
		}
		if count == 1 {
			agree := true
			for _, n := range nodes {
				if _, id := n.Raft.LeaderWithID(); id != leader.ID {
					agree = false
				}
			}
			if agree {
				return leader, nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, fmt.Errorf("no single agreed leader among %d nodes after %v", len(nodes), timeout)
}

// WaitApplied waits until every node's FSM applied at least n entries.
func WaitApplied(nodes []*Node, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		behind := ""
		for _, nd := range nodes {
			if got := nd.FSM.Len(); got < n {
				behind += fmt.Sprintf(" %s=%d", nd.ID, got)
			}
		}
		if behind == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v, nodes still short of %d applied entries:%s", timeout, n, behind)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Latencies applies count commands made by mk (after warmup unmeasured ones) one at a time on
// leader and returns each Apply → committed-and-applied-on-the-leader duration, sorted.
func Latencies(leader *raft.Raft, warmup, count int, mk func(i int) []byte) ([]time.Duration, error) {
	out := make([]time.Duration, 0, count)
	for i := 0; i < warmup+count; i++ {
		cmd := mk(i)
		start := time.Now()
		f := leader.Apply(cmd, 10*time.Second)
		if err := f.Error(); err != nil {
			return nil, fmt.Errorf("apply %d: %w", i, err)
		}
		if resp := f.Response(); resp != nil {
			if err, ok := resp.(error); ok {
				return nil, fmt.Errorf("apply %d: fsm: %w", i, err)
			}
		}
		if i >= warmup {
			out = append(out, time.Since(start))
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a] < out[b] })
	return out, nil
}

// Percentile returns the q-quantile (0..1) of sorted durations (nearest rank).
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}
