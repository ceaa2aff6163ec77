package machnetraft

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	machnet "github.com/machnet-rs/machnet-rs/go"
)

// kvClient is one flow to a KV front end (test helper).
type kvClient struct {
	t    *testing.T
	ch   *machnet.Channel
	flow machnet.Flow
}

func dialKV(t *testing.T, from sidecar, toIP string, port uint16) *kvClient {
	t.Helper()
	ch, err := attach(from.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	flow, err := ch.Connect(ctx, from.ip, toIP, port)
	if err != nil {
		t.Fatalf("connect to KV %s:%d: %v", toIP, port, err)
	}
	return &kvClient{t, ch, flow}
}

func (c *kvClient) send(req KVRequest) {
	c.t.Helper()
	if err := c.ch.Send(c.flow, EncodeKVRequest(req)); err != nil {
		c.t.Fatal(err)
	}
}

// recv returns the next response's status, id and body.
func (c *kvClient) recv() (KVStatus, uint32, []byte) {
	c.t.Helper()
	buf := make([]byte, machnet.MaxMessageLen)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, _, err := c.ch.Recv(ctx, buf)
	if err != nil {
		c.t.Fatalf("KV response: %v", err)
	}
	if n < 5 {
		c.t.Fatalf("KV response of %d bytes", n)
	}
	return KVStatus(buf[0]), binary.LittleEndian.Uint32(buf[1:5]), append([]byte(nil), buf[5:n]...)
}

// expect sends req and checks the response.
func (c *kvClient) expect(req KVRequest, status KVStatus, body []byte) {
	c.t.Helper()
	c.send(req)
	st, id, got := c.recv()
	if st != status || id != req.ID || (body != nil && !bytes.Equal(got, body)) {
		c.t.Fatalf("request %d (op %d): got status %d id %d body %q, want status %d body %q", req.ID, req.Op, st, id, got, status, body)
	}
}

// TestKVFrontEnd: three nodes, each with a KV front end. Writes on the leader are answered
// once applied (and reach every node); a follower refuses writes naming the leader and serves
// reads from its own state; a pipeline of interleaved writes and reads on the leader is
// answered in order, each read seeing the writes before it; malformed requests get
// BAD_REQUEST and the flow goes on.
func TestKVFrontEnd(t *testing.T) {
	sc := sidecars(t)
	nodes := startMachnetCluster(t, sc, func(c *raft.Config) {
		c.MaxAppendEntries = KVMaxAppendEntries
		// The pipelined 1 MiB SETs below make all three nodes of this one -race process copy and
		// decode ~21 MiB each on two cores; in one CI run a follower's heartbeat answers then
		// took over 500 ms and the leader lost its lease mid-SET ("leadership lost while
		// committing log"). This test is about the KV front end, not lease timing (as in
		// TestSnapshotInstall).
		c.HeartbeatTimeout = 3 * time.Second
		c.ElectionTimeout = 3 * time.Second
		c.LeaderLeaseTimeout = 3 * time.Second
	})
	kvPorts := make([]uint16, len(nodes))
	for i, n := range nodes {
		kvPorts[i] = port()
		s, err := ServeKV(KVServerConfig{Socket: sc[i].socket, LocalIP: sc[i].ip, Port: kvPorts[i]}, n.Raft, n.FSM)
		if err != nil {
			t.Fatalf("KV front end of %s: %v", n.ID, err)
		}
		t.Cleanup(func() { _ = s.Close() })
	}
	leader, err := WaitLeader(nodes, electionWait)
	if err != nil {
		t.Fatal(err)
	}
	li, fi := 0, 0
	for i, n := range nodes {
		if n == leader {
			li = i
		} else {
			fi = i
		}
	}
	// The client sits on the follower's sidecar: every flow crosses sidecars but one.
	lc := dialKV(t, sc[fi], sc[li].ip, kvPorts[li])
	fc := dialKV(t, sc[fi], sc[fi].ip, kvPorts[fi])

	lc.expect(KVRequest{Op: KVGet, ID: 1, Key: []byte("k")}, KVNotFound, []byte{})
	lc.expect(KVRequest{Op: KVSet, ID: 2, Key: []byte("k"), Value: []byte("v1")}, KVOK, []byte{})
	if err := WaitApplied(nodes, 1, applyWait); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if v, ok := n.FSM.Get("k"); !ok || string(v) != "v1" {
			t.Fatalf("%s holds %q after the acknowledged SET", n.ID, v)
		}
	}
	fc.expect(KVRequest{Op: KVGet, ID: 3, Key: []byte("k")}, KVOK, []byte("v1"))
	fc.send(KVRequest{Op: KVSet, ID: 4, Key: []byte("k"), Value: []byte("no")})
	st, id, body := fc.recv()
	want := fmt.Sprintf("not the leader; the leader is %s at %s", leader.ID, leader.Trans.LocalAddr())
	if st != KVServerError || id != 4 || string(body) != want {
		t.Fatalf("write on a follower: status %d id %d body %q, want %q", st, id, body, want)
	}
	fc.send(KVRequest{Op: KVDelete, ID: 5, Key: []byte("k")})
	if st, _, _ := fc.recv(); st != KVServerError {
		t.Fatalf("delete on a follower: status %d", st)
	}

	// Pipelined: per key, SET a, GET a, DELETE a, GET a (sent without reading).
	const keys = 100
	var reqs []KVRequest
	for i := 0; i < keys; i++ {
		k := []byte(fmt.Sprintf("p%03d", i))
		v := []byte(strings.Repeat("x", i))
		id := uint32(100 + 4*i)
		reqs = append(reqs,
			KVRequest{Op: KVSet, ID: id, Key: k, Value: v},
			KVRequest{Op: KVGet, ID: id + 1, Key: k},
			KVRequest{Op: KVDelete, ID: id + 2, Key: k},
			KVRequest{Op: KVGet, ID: id + 3, Key: k})
	}
	for _, r := range reqs {
		lc.send(r)
	}
	for i, r := range reqs {
		st, id, body := lc.recv()
		wantSt, wantBody := KVOK, []byte{}
		switch i % 4 {
		case 1:
			wantBody = []byte(strings.Repeat("x", i/4))
		case 3:
			wantSt = KVNotFound
		}
		if id != r.ID || st != wantSt || !bytes.Equal(body, wantBody) {
			t.Fatalf("pipelined response %d: id %d status %d body %q, want id %d status %d body %q", i, id, st, body, r.ID, wantSt, wantBody)
		}
	}

	lc.expect(KVRequest{Op: KVSet, ID: 900, Key: []byte("s:b"), Value: []byte("2")}, KVOK, []byte{})
	lc.expect(KVRequest{Op: KVSet, ID: 901, Key: []byte("s:a"), Value: []byte("1")}, KVOK, []byte{})
	lc.expect(KVRequest{Op: KVScan, ID: 902, Key: []byte("s:"), Limit: 10}, KVOK,
		KVScanResponse(902, []Pair{{"s:a", []byte("1")}, {"s:b", []byte("2")}})[5:])
	if err := lc.ch.Send(lc.flow, []byte{KVGet, 7, 0, 0, 0, 200, 0, 'x'}); err != nil {
		t.Fatal(err)
	}
	if st, id, body := lc.recv(); st != KVBadRequest || id != 7 || string(body) != "key length 200 exceeds the message" {
		t.Fatalf("malformed: status %d id %d body %q", st, id, body)
	}
	lc.expect(KVRequest{Op: KVGet, ID: 903, Key: []byte("k")}, KVOK, []byte("v1"))

	// Pipelined SETs of the largest value: more than one AppendEntries can carry at once.
	big := bytes.Repeat([]byte{0xab}, KVMaxValue)
	const bigCount = 3 * KVMaxAppendEntries
	for i := 0; i < bigCount; i++ {
		lc.send(KVRequest{Op: KVSet, ID: uint32(1000 + i), Key: []byte(fmt.Sprintf("big%d", i)), Value: big})
	}
	for i := 0; i < bigCount; i++ {
		if st, id, body := lc.recv(); st != KVOK || id != uint32(1000+i) {
			t.Fatalf("large SET %d: status %d id %d body %.200q", i, st, id, body)
		}
	}
	before := nodes[li].FSM.Len()
	if err := WaitApplied(nodes, before, applyWait); err != nil {
		t.Fatal(err)
	}
	checkIdentical(t, nodes)
}
