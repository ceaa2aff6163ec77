package machnetraft

// The KV front end: the request format of examples/kv (kvprotocol.go) served over Machnet by
// one raft node, on a channel of its own.
//
// Writes (SET, DELETE) become raft commands (SetCommand, DeleteCommand) and are answered once
// raft.Apply reports them committed and applied to this node's state machine. A node that is
// not the leader answers a write with KVServerError and a body naming the leader (see
// notLeaderBody). Reads (GET, SCAN) on the leader first pass a raft.Barrier issued after the
// request arrived: it commits only while this node still leads a majority and completes once
// every earlier entry is applied, so reads are linearizable. A follower answers reads from its
// own applied state at once, which may lag the leader (stale, but never ahead of a commit).
//
// Pipelining: each flow may have many requests outstanding, answered in request order with the
// effect of running them one after another. The receiving goroutine queues each request on its
// flow; one goroutine per busy flow takes the queue in runs: a run of consecutive writes is
// handed to raft.Apply all at once (raft batches them; the log keeps their order) and answered
// as each commits; a run of consecutive reads waits for one barrier, issued after the writes
// before it were applied, then reads them all. So a read sees exactly the flow's writes before
// it, and writes after it wait until it was read.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	machnet "github.com/machnet-rs/machnet-rs/go"
)

// KVServerConfig configures a KVServer.
type KVServerConfig struct {
	Socket         string        // the sidecar's control socket ("" = $MACHNET_SOCKET or the default)
	LocalIP        string        // the sidecar's IPv4 address
	Port           uint16        // the Machnet port the KV front end listens on
	Timeout        time.Duration // per write or read barrier (default 10 s)
	MaxOutstanding int           // requests in progress over all flows (default 4096)
	Logger         hclog.Logger  // default: a null logger
}

// KVServer serves the examples/kv request format for one raft node.
type KVServer struct {
	cfg   KVServerConfig
	raft  *raft.Raft
	fsm   *KV
	ch    *machnet.Channel
	log   hclog.Logger
	slots chan struct{} // one token per request in progress (back-pressure on the receiver)

	mu    sync.Mutex
	flows map[machnet.Flow]*flowQueue

	shutdown  chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// flowQueue holds one flow's requests in arrival order; running says whether a goroutine is
// answering them (it exits, and removes the queue, when the queue runs empty).
type flowQueue struct {
	pending []kvItem
	running bool
}

// kvItem is one queued request: parsed (owning its bytes), or malformed with its answer ready.
type kvItem struct {
	req    KVRequest
	answer []byte
}

func (it *kvItem) isWrite() bool {
	return it.answer == nil && (it.req.Op == KVSet || it.req.Op == KVDelete)
}

// KVMaxAppendEntries is the raft.Config.MaxAppendEntries a node with a KV front end needs: the
// transport sends an AppendEntries as one Machnet message (at most machnet.MaxMessageLen), so
// that many SETs of the largest value, with their framing, must fit in one (7 with 1 MiB
// values; raft's default of 64 would make replication fail for good once a client pipelined
// large values). Smaller batches cost little: raft pipelines AppendEntries.
const KVMaxAppendEntries = (machnet.MaxMessageLen - 64<<10) / (KVMaxRequest + 256)

// ServeKV attaches to the sidecar, listens on cfg.Port and serves KV requests for r, whose
// state machine is fsm, until Close. Every node of the cluster must run with MaxAppendEntries
// at most KVMaxAppendEntries.
func ServeKV(cfg KVServerConfig, r *raft.Raft, fsm *KV) (*KVServer, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxOutstanding <= 0 {
		cfg.MaxOutstanding = 4096
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	ch, err := listenChannel(cfg.Socket, cfg.LocalIP, cfg.Port)
	if err != nil {
		return nil, err
	}
	s := &KVServer{
		cfg: cfg, raft: r, fsm: fsm, ch: ch, log: cfg.Logger,
		slots:    make(chan struct{}, cfg.MaxOutstanding),
		flows:    make(map[machnet.Flow]*flowQueue),
		shutdown: make(chan struct{}),
	}
	s.wg.Add(1)
	go s.receive()
	return s, nil
}

// Close stops serving and detaches the channel. Requests in progress are not answered.
func (s *KVServer) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.shutdown)
		err = s.ch.Close()
		s.wg.Wait()
	})
	return err
}

// receive is the channel's only receiver: it parses each request and queues it on its flow.
func (s *KVServer) receive() {
	defer s.wg.Done()
	// Every message fits: Machnet refuses larger ones, and an oversized request still gets its
	// BAD_REQUEST answer (as from examples/kv).
	buf := make([]byte, machnet.MaxMessageLen)
	for {
		n, flow, err := s.ch.Recv(context.Background(), buf)
		if err != nil {
			select {
			case <-s.shutdown:
			default:
				s.log.Error("KV channel failed; no more requests", "error", err)
			}
			return
		}
		select {
		case s.slots <- struct{}{}:
		case <-s.shutdown:
			return
		}
		s.enqueue(flow, parseItem(buf[:n]))
	}
}

// parseItem parses msg (only valid during the call) into an item that owns its bytes.
func parseItem(msg []byte) kvItem {
	req, err := ParseKVRequest(msg)
	if err != nil {
		return kvItem{answer: KVResponse(KVBadRequest, KVRequestID(msg), []byte(err.Error()))}
	}
	req.Key = append([]byte(nil), req.Key...)
	if req.Value != nil {
		req.Value = append([]byte(nil), req.Value...)
	}
	return kvItem{req: req}
}

// enqueue appends an item to its flow's queue, starting the flow's answering goroutine if none
// runs.
func (s *KVServer) enqueue(flow machnet.Flow, it kvItem) {
	s.mu.Lock()
	q := s.flows[flow]
	if q == nil {
		q = &flowQueue{}
		s.flows[flow] = q
	}
	q.pending = append(q.pending, it)
	if !q.running {
		q.running = true
		s.wg.Add(1)
		go s.answer(flow, q)
	}
	s.mu.Unlock()
}

// answer serves flow's queue, run by run (see the file's header), until it is empty.
func (s *KVServer) answer(flow machnet.Flow, q *flowQueue) {
	defer s.wg.Done()
	send := func(resp []byte) bool {
		<-s.slots
		select {
		case <-s.shutdown:
			return false
		default:
		}
		if err := s.ch.Send(flow, resp); err != nil {
			// The client may have left; later answers on this flow fail the same way.
			s.log.Warn("KV answer not sent", "to", flow, "error", err)
		}
		return true
	}
	for {
		s.mu.Lock()
		batch := q.pending
		q.pending = nil
		if len(batch) == 0 {
			q.running = false
			delete(s.flows, flow)
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for len(batch) > 0 {
			n := 1
			for n < len(batch) && batch[n].isWrite() == batch[0].isWrite() {
				n++
			}
			var ok bool
			if batch[0].isWrite() {
				ok = s.writes(batch[:n], send)
			} else {
				ok = s.reads(batch[:n], send)
			}
			if !ok {
				return
			}
			batch = batch[n:]
		}
	}
}

// writes hands a run of SETs and DELETEs to raft together and answers each once it is
// committed and applied (or failed). It returns false if the server shut down.
func (s *KVServer) writes(run []kvItem, send func([]byte) bool) bool {
	if s.raft.State() != raft.Leader {
		body := []byte(s.notLeaderBody())
		for i := range run {
			if !send(KVResponse(KVServerError, run[i].req.ID, body)) {
				return false
			}
		}
		return true
	}
	futures := make([]raft.ApplyFuture, len(run))
	for i := range run {
		cmd := SetCommand(string(run[i].req.Key), run[i].req.Value)
		if run[i].req.Op == KVDelete {
			cmd = DeleteCommand(string(run[i].req.Key))
		}
		futures[i] = s.raft.Apply(cmd, s.cfg.Timeout)
	}
	for i, f := range futures {
		if !send(s.writeResponse(run[i].req.ID, f)) {
			return false
		}
	}
	return true
}

// reads answers a run of GETs and SCANs (and malformed requests) from the applied state, on
// the leader after one barrier. It returns false if the server shut down.
func (s *KVServer) reads(run []kvItem, send func([]byte) bool) bool {
	var barrierErr error
	for i := range run {
		if run[i].answer == nil && s.raft.State() == raft.Leader {
			barrierErr = s.raft.Barrier(s.cfg.Timeout).Error()
			break
		}
	}
	for i := range run {
		it := &run[i]
		resp := it.answer
		switch {
		case resp != nil:
		case barrierErr != nil:
			resp = KVResponse(KVServerError, it.req.ID, []byte(s.raftErrorBody("read", barrierErr)))
		default:
			resp = s.read(it.req)
		}
		if !send(resp) {
			return false
		}
	}
	return true
}

// writeResponse waits for a SET or DELETE to be committed and applied.
func (s *KVServer) writeResponse(id uint32, f raft.ApplyFuture) []byte {
	if err := f.Error(); err != nil {
		return KVResponse(KVServerError, id, []byte(s.raftErrorBody("write", err)))
	}
	switch r := f.Response().(type) {
	case nil:
		return KVResponse(KVOK, id, nil)
	case DeleteResult:
		if r.Existed {
			return KVResponse(KVOK, id, nil)
		}
		return KVResponse(KVNotFound, id, nil)
	case error:
		return KVResponse(KVServerError, id, []byte("state machine: "+r.Error()))
	default:
		return KVResponse(KVServerError, id, []byte(fmt.Sprintf("state machine: unexpected result %T", r)))
	}
}

// read answers a GET or SCAN from the applied state.
func (s *KVServer) read(req KVRequest) []byte {
	if req.Op == KVScan {
		return KVScanResponse(req.ID, s.fsm.Scan(string(req.Key), int(req.Limit)))
	}
	if v, ok := s.fsm.Get(string(req.Key)); ok {
		return KVResponse(KVOK, req.ID, v)
	}
	return KVResponse(KVNotFound, req.ID, nil)
}

// notLeaderBody is the SERVER_ERROR body of a write sent to a node that is not the leader:
// "not the leader; the leader is <id> at <raft address>" or "not the leader; no leader known".
// The address is the leader's raft transport address, not its KV port.
func (s *KVServer) notLeaderBody() string {
	addr, id := s.raft.LeaderWithID()
	if id == "" {
		return "not the leader; no leader known"
	}
	return fmt.Sprintf("not the leader; the leader is %s at %s", id, addr)
}

// raftErrorBody explains a failed write or read barrier; leadership errors name the leader.
func (s *KVServer) raftErrorBody(what string, err error) string {
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
		return fmt.Sprintf("%s failed (%v); %s", what, err, s.notLeaderBody())
	}
	return fmt.Sprintf("%s failed: %v", what, err)
}
