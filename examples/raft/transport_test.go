package machnetraft

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	machnet "github.com/machnet-rs/machnet-rs/go"
)

// The tests need three sidecars; ci/raft.sh starts them and sets:
//
//	MACHNET_RAFT_SOCKETS  three control sockets, comma-separated
//	MACHNET_RAFT_IPS      the three sidecars' IPv4 addresses, comma-separated
//	MACHNET_RAFT_SEED     (optional) seed of the test data; printed either way

type sidecar struct{ socket, ip string }

func sidecars(t testing.TB) []sidecar {
	t.Helper()
	socks := strings.Split(os.Getenv("MACHNET_RAFT_SOCKETS"), ",")
	ips := strings.Split(os.Getenv("MACHNET_RAFT_IPS"), ",")
	if len(socks) != 3 || len(ips) != 3 || socks[0] == "" {
		t.Skip("MACHNET_RAFT_SOCKETS / MACHNET_RAFT_IPS not set (ci/raft.sh starts the sidecars)")
	}
	out := make([]sidecar, 3)
	for i := range out {
		out[i] = sidecar{socks[i], ips[i]}
	}
	return out
}

var (
	seedOnce sync.Once
	seed     int64
)

// rng returns a generator seeded from MACHNET_RAFT_SEED (or the clock), logging the seed.
func rng(t *testing.T) *rand.Rand {
	seedOnce.Do(func() {
		seed = time.Now().UnixNano()
		if s := os.Getenv("MACHNET_RAFT_SEED"); s != "" {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				panic("bad MACHNET_RAFT_SEED: " + s)
			}
			seed = v
		}
		fmt.Printf("raft tests: seed %d (MACHNET_RAFT_SEED=%d to repeat)\n", seed, seed)
	})
	return rand.New(rand.NewSource(seed + int64(len(t.Name()))))
}

var nextPort uint32 = 7000

func port() uint16 { return uint16(atomic.AddUint32(&nextPort, 1)) }

func newTransport(t testing.TB, sc sidecar) *Transport {
	t.Helper()
	tr, err := NewTransport(Config{Socket: sc.socket, LocalIP: sc.ip, Port: port(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("NewTransport on %s: %v", sc.ip, err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// serveRPCs answers every RPC reaching tr with fn until the test ends.
func serveRPCs(t testing.TB, tr raft.Transport, fn func(rpc raft.RPC) (interface{}, error)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case rpc := <-tr.Consumer():
				resp, err := fn(rpc)
				rpc.Respond(resp, err)
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() { close(done); wg.Wait() })
}

func randomEntries(r *rand.Rand, n int) []*raft.Log {
	out := make([]*raft.Log, n)
	for i := range out {
		data := make([]byte, 1+r.Intn(200))
		r.Read(data)
		out[i] = &raft.Log{Index: uint64(i + 10), Term: 3, Type: raft.LogCommand, Data: data,
			AppendedAt: time.Unix(1700000000, int64(i)).UTC()}
	}
	return out
}

// TestTransportRPCs checks every RPC kind field by field, many concurrent RPCs on one flow
// (responses matched by id), error propagation and the heartbeat fast path.
func TestTransportRPCs(t *testing.T) {
	sc := sidecars(t)
	r := rng(t)
	a, b := newTransport(t, sc[0]), newTransport(t, sc[1])
	var got sync.Map // term -> request seen by b
	serveRPCs(t, b, func(rpc raft.RPC) (interface{}, error) {
		switch req := rpc.Command.(type) {
		case *raft.AppendEntriesRequest:
			got.Store(req.Term, req)
			if req.Term == 999 {
				return nil, errors.New("refused by test")
			}
			return &raft.AppendEntriesResponse{Term: req.Term, LastLog: req.PrevLogEntry + uint64(len(req.Entries)), Success: true}, nil
		case *raft.RequestVoteRequest:
			return &raft.RequestVoteResponse{Term: req.Term, Granted: true}, nil
		case *raft.RequestPreVoteRequest:
			return &raft.RequestPreVoteResponse{Term: req.Term + 1, Granted: false}, nil
		case *raft.TimeoutNowRequest:
			return &raft.TimeoutNowResponse{RPCHeader: raft.RPCHeader{ID: []byte("b")}}, nil
		}
		return nil, fmt.Errorf("unexpected %T", rpc.Command)
	})
	var heartbeats int32
	b.SetHeartbeatHandler(func(rpc raft.RPC) {
		atomic.AddInt32(&heartbeats, 1)
		rpc.Respond(&raft.AppendEntriesResponse{Term: rpc.Command.(*raft.AppendEntriesRequest).Term, Success: true}, nil)
	})

	// 64 concurrent AppendEntries with random entries, each answered with its own term.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	reqs := make([]*raft.AppendEntriesRequest, 64)
	for i := range reqs {
		reqs[i] = &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("a"), Addr: []byte(a.LocalAddr())},
			Term:      uint64(i + 1), PrevLogEntry: uint64(i * 10), PrevLogTerm: 2,
			Entries: randomEntries(r, 1+r.Intn(20)), LeaderCommitIndex: 5,
		}
	}
	for i := range reqs {
		wg.Add(1)
		go func(req *raft.AppendEntriesRequest) {
			defer wg.Done()
			var resp raft.AppendEntriesResponse
			if err := a.AppendEntries("b", b.LocalAddr(), req, &resp); err != nil {
				errs <- err
				return
			}
			want := req.PrevLogEntry + uint64(len(req.Entries))
			if resp.Term != req.Term || resp.LastLog != want || !resp.Success {
				errs <- fmt.Errorf("term %d: response %+v does not match its request", req.Term, resp)
			}
		}(reqs[i])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, req := range reqs {
		v, ok := got.Load(req.Term)
		if !ok {
			t.Fatalf("request term %d never reached the server", req.Term)
		}
		if !reflect.DeepEqual(v, req) {
			t.Fatalf("request term %d changed in transit:\n got %+v\nwant %+v", req.Term, v, req)
		}
	}

	// An error returned by the handler reaches the caller.
	var resp raft.AppendEntriesResponse
	err := a.AppendEntries("b", b.LocalAddr(), &raft.AppendEntriesRequest{Term: 999, PrevLogEntry: 1}, &resp)
	if err == nil || err.Error() != "refused by test" {
		t.Fatalf("want the handler's error, got %v", err)
	}

	// Heartbeats take the fast path.
	hb := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{Addr: []byte(a.LocalAddr())}, Term: 7}
	if err := a.AppendEntries("b", b.LocalAddr(), hb, &resp); err != nil || resp.Term != 7 || !resp.Success {
		t.Fatalf("heartbeat: %v %+v", err, resp)
	}
	if atomic.LoadInt32(&heartbeats) != 1 {
		t.Fatalf("heartbeat handler ran %d times, want 1", heartbeats)
	}

	var vote raft.RequestVoteResponse
	if err := a.RequestVote("b", b.LocalAddr(), &raft.RequestVoteRequest{Term: 41}, &vote); err != nil || vote.Term != 41 || !vote.Granted {
		t.Fatalf("RequestVote: %v %+v", err, vote)
	}
	var pre raft.RequestPreVoteResponse
	if err := a.RequestPreVote("b", b.LocalAddr(), &raft.RequestPreVoteRequest{Term: 41}, &pre); err != nil || pre.Term != 42 || pre.Granted {
		t.Fatalf("RequestPreVote: %v %+v", err, pre)
	}
	var tn raft.TimeoutNowResponse
	if err := a.TimeoutNow("b", b.LocalAddr(), &raft.TimeoutNowRequest{}, &tn); err != nil || string(tn.ID) != "b" {
		t.Fatalf("TimeoutNow: %v %+v", err, tn)
	}
	if got := a.DecodePeer(a.EncodePeer("x", "127.0.0.9:1234")); got != "127.0.0.9:1234" {
		t.Fatalf("DecodePeer(EncodePeer) = %q", got)
	}
}

// TestTransportSnapshotAndPipeline sends a multi-chunk snapshot (byte-identical on arrival)
// and a pipeline of AppendEntries whose responses must come back in order.
func TestTransportSnapshotAndPipeline(t *testing.T) {
	sc := sidecars(t)
	r := rng(t)
	a, b := newTransport(t, sc[0]), newTransport(t, sc[2])
	snap := make([]byte, 2*ChunkSize+12345)
	r.Read(snap)
	var gotSnap []byte
	serveRPCs(t, b, func(rpc raft.RPC) (interface{}, error) {
		switch req := rpc.Command.(type) {
		case *raft.InstallSnapshotRequest:
			data, err := io.ReadAll(rpc.Reader)
			if err != nil {
				return nil, err
			}
			gotSnap = data
			return &raft.InstallSnapshotResponse{Term: req.Term, Success: true}, nil
		case *raft.AppendEntriesRequest:
			return &raft.AppendEntriesResponse{Term: req.Term, LastLog: req.PrevLogEntry, Success: true}, nil
		}
		return nil, fmt.Errorf("unexpected %T", rpc.Command)
	})

	var sresp raft.InstallSnapshotResponse
	req := &raft.InstallSnapshotRequest{Term: 5, LastLogIndex: 100, LastLogTerm: 4, Size: int64(len(snap))}
	if err := a.InstallSnapshot("b", b.LocalAddr(), req, &sresp, bytes.NewReader(snap)); err != nil {
		t.Fatalf("InstallSnapshot: %v", err)
	}
	if !sresp.Success || sresp.Term != 5 {
		t.Fatalf("InstallSnapshot response %+v", sresp)
	}
	if !bytes.Equal(gotSnap, snap) {
		t.Fatalf("snapshot differs after transfer (%d bytes received, %d sent)", len(gotSnap), len(snap))
	}

	// A heartbeat takes its own lane: it must never queue behind a snapshot on one flow.
	hb := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{Addr: []byte(a.LocalAddr())}, Term: 5}
	if err := a.AppendEntries("b", b.LocalAddr(), hb, &raft.AppendEntriesResponse{}); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	pl, err := a.AppendEntriesPipeline("b", b.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	a.mu.Lock()
	flows := map[machnet.Flow]lane{}
	for k, p := range a.peers {
		flows[p.flow] = k.lane
	}
	a.mu.Unlock()
	if len(flows) != 3 {
		t.Fatalf("snapshot, heartbeat and pipeline to one peer use %d distinct flows (lanes %v), want 3", len(flows), flows)
	}
	const n = 200
	go func() {
		for i := 0; i < n; i++ {
			req := &raft.AppendEntriesRequest{Term: 9, PrevLogEntry: uint64(i), Entries: randomEntries(r, 1)}
			if _, err := pl.AppendEntries(req, &raft.AppendEntriesResponse{}); err != nil {
				t.Errorf("pipeline AppendEntries %d: %v", i, err)
				return
			}
		}
	}()
	for i := 0; i < n; i++ {
		select {
		case f := <-pl.Consumer():
			if err := f.Error(); err != nil {
				t.Fatalf("pipeline future %d: %v", i, err)
			}
			if f.Request().PrevLogEntry != uint64(i) || f.Response().LastLog != uint64(i) {
				t.Fatalf("pipeline future %d out of order: request %d, response %d", i, f.Request().PrevLogEntry, f.Response().LastLog)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("pipeline: only %d of %d responses", i, n)
		}
	}
}

// TestTransportPeerGone: RPCs to a closed peer fail (no hang), and work again once a transport
// listens at that address again.
func TestTransportPeerGone(t *testing.T) {
	sc := sidecars(t)
	a, err := NewTransport(Config{Socket: sc[0].socket, LocalIP: sc[0].ip, Port: port(), Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	p := port()
	b, err := NewTransport(Config{Socket: sc[1].socket, LocalIP: sc[1].ip, Port: p, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	answer := func(tr *Transport) {
		serveRPCs(t, tr, func(rpc raft.RPC) (interface{}, error) {
			return &raft.RequestVoteResponse{Term: rpc.Command.(*raft.RequestVoteRequest).Term, Granted: true}, nil
		})
	}
	answer(b)
	var vote raft.RequestVoteResponse
	if err := a.RequestVote("b", b.LocalAddr(), &raft.RequestVoteRequest{Term: 1}, &vote); err != nil || !vote.Granted {
		t.Fatalf("RequestVote: %v %+v", err, vote)
	}
	addr := b.LocalAddr()
	_ = b.Close()
	start := time.Now()
	if err := a.RequestVote("b", addr, &raft.RequestVoteRequest{Term: 2}, &vote); err == nil {
		t.Fatalf("RequestVote to a closed transport succeeded")
	} else {
		t.Logf("RequestVote to closed peer failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	b2, err := NewTransport(Config{Socket: sc[1].socket, LocalIP: sc[1].ip, Port: p, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatalf("re-listen on port %d: %v", p, err)
	}
	t.Cleanup(func() { _ = b2.Close() })
	answer(b2)
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := a.RequestVote("b", addr, &raft.RequestVoteRequest{Term: 3}, &vote)
		if err == nil && vote.Term == 3 && vote.Granted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("RequestVote after the peer came back: %v %+v", err, vote)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
