package machnetraft

import (
	"fmt"
	"io"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// BenchmarkTransportAppendEntries measures one AppendEntries round trip (one 80 B entry, the
// follower answering from its consumer loop like raft's main goroutine) over the Machnet
// transport and, in the same run, over raft's TCP NetworkTransport between the same addresses.
// It isolates the transport's share of the replicated-command latency (PERFORMANCE.md §10).
//
//	ci/raft.sh starts the sidecars; by hand: MACHNET_RAFT_SOCKETS=... MACHNET_RAFT_IPS=... \
//	    go test -run '^$' -bench TransportAppendEntries -benchtime 5000x
func BenchmarkTransportAppendEntries(b *testing.B) {
	sc := sidecars(b)
	answer := func(rpc raft.RPC) (interface{}, error) {
		req := rpc.Command.(*raft.AppendEntriesRequest)
		return &raft.AppendEntriesResponse{Term: req.Term, LastLog: req.PrevLogEntry + 1, Success: true}, nil
	}
	b.Run("machnet", func(b *testing.B) {
		leader, follower := newTransport(b, sc[0]), newTransport(b, sc[1])
		serveRPCs(b, follower, answer)
		benchAppendEntries(b, leader, follower.LocalAddr())
	})
	b.Run("tcp", func(b *testing.B) {
		leader, follower := tcpTransport(b, sc[0].ip), tcpTransport(b, sc[1].ip)
		serveRPCs(b, follower, answer)
		benchAppendEntries(b, leader, follower.LocalAddr())
	})
}

func tcpTransport(b *testing.B, ip string) *raft.NetworkTransport {
	tr, err := raft.NewTCPTransport(net.JoinHostPort(ip, "0"), nil, 4, 10*time.Second, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = tr.Close() })
	return tr
}

func benchAppendEntries(b *testing.B, leader raft.Transport, target raft.ServerAddress) {
	entry := []*raft.Log{{Index: 1, Term: 1, Type: raft.LogCommand, Data: make([]byte, 80)}}
	call := func(i int) {
		req := &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{Addr: []byte(leader.LocalAddr())},
			Term:      1, PrevLogEntry: uint64(i), PrevLogTerm: 1, Entries: entry, LeaderCommitIndex: uint64(i),
		}
		var resp raft.AppendEntriesResponse
		if err := leader.AppendEntries("f", target, req, &resp); err != nil || !resp.Success {
			b.Fatalf("AppendEntries %d: %v (success %v)", i, err, resp.Success)
		}
	}
	for i := 0; i < 200; i++ { // warm-up: connect, caches
		call(i)
	}
	rtts := make([]time.Duration, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		call(i)
		rtts[i] = time.Since(start)
	}
	b.StopTimer()
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	pct := func(p float64) float64 { return float64(rtts[int(p*float64(len(rtts)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(pct(0.5), "p50-us")
	b.ReportMetric(pct(0.99), "p99-us")
	b.Logf("%s: n=%d p50 %.1f us p99 %.1f us", fmt.Sprintf("%T", leader), b.N, pct(0.5), pct(0.99))
}
