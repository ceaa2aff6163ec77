// Package machnetraft is a raft.Transport for github.com/hashicorp/raft over Machnet (the Go
// binding in ../../go), a replicated in-memory key-value state machine, and the helpers the
// cluster tests and the latency comparison share.
//
// Wire format: every Machnet message starts with a 9-byte header, one kind byte and a 64-bit
// little-endian request id, followed by a msgpack body. Requests carry the raft request struct;
// responses (kind | 0x80) carry the error string then the raft response struct. Many requests
// can be outstanding on one flow: responses are matched by id. A snapshot (InstallSnapshot)
// goes as the request message followed by chunk messages of at most ChunkSize bytes; the
// receiver collects them and hands raft the whole snapshot.
//
// Flows and channels: a Transport owns one listening channel (incoming RPCs; responses go back
// on the flow they came on) and, per peer, up to three outgoing lanes, each its own channel with
// one flow: heartbeats, snapshots and everything else. A Machnet flow delivers in order, so
// sharing one would queue a heartbeat behind megabytes of snapshot and cost the leader its lease
// (NetworkTransport likewise gives concurrent RPCs their own connections). Each channel has
// exactly one receiving goroutine; sends come from any goroutine (the binding's Channel is safe
// for concurrent use). A lane whose flow fails or whose RPC times out is dropped and reconnected
// on the next RPC.
package machnetraft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	machnet "example.invalid/machnet-rs/go"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
)

// Message kinds (the first byte of every message). Responses set respFlag.
const (
	kindAppendEntries byte = iota + 1
	kindRequestVote
	kindRequestPreVote
	kindInstallSnapshot
	kindTimeoutNow
	kindSnapshotChunk
	respFlag byte = 0x80
)

const headerLen = 9

// MaxSnapshotSize is the largest snapshot a Transport accepts (the receiver holds it in memory).
const MaxSnapshotSize = 1 << 32

// ChunkSize is the largest piece of snapshot data sent in one Machnet message.
const ChunkSize = 1 << 20

// ErrPeerFailed is returned for RPCs whose peer flow broke while they were outstanding.
var ErrPeerFailed = errors.New("machnet raft transport: peer flow failed")

// mh is the msgpack handle shared by all encoders and decoders (safe for concurrent use).
var mh = &codec.MsgpackHandle{}

// attachMu serialises machnet.Init + machnet.Attach: Init sets the process-wide sidecar that
// the next Attach uses, so that several transports in one process (the in-process tests) can
// each attach to their own sidecar.
var attachMu sync.Mutex

func attach(socket string) (*machnet.Channel, error) {
	attachMu.Lock()
	defer attachMu.Unlock()
	if err := machnet.Init(socket); err != nil {
		return nil, err
	}
	return machnet.Attach()
}

// listenChannel attaches a channel to the sidecar at socket and listens on ip:port with it.
func listenChannel(socket, ip string, port uint16) (*machnet.Channel, error) {
	ch, err := attach(socket)
	if err != nil {
		return nil, err
	}
	if err := ch.Listen(ip, port); err != nil {
		_ = ch.Close()
		return nil, err
	}
	return ch, nil
}

// Config configures a Transport.
type Config struct {
	Socket  string        // the sidecar's control socket ("" = $MACHNET_SOCKET or the default)
	LocalIP string        // the sidecar's IPv4 address (what peers connect to)
	Port    uint16        // the Machnet port this node listens on
	Timeout time.Duration // per RPC (default 10 s; snapshots get more per MiB)
	Logger  hclog.Logger  // default: a null logger
}

// Transport is a raft.Transport (with raft.WithPreVote and raft.WithClose) over Machnet.
type Transport struct {
	nextID uint64 // atomic; first in the struct for 64-bit alignment on 32-bit platforms
	queued int64  // atomic: requests in queue or held by forward

	cfg    Config
	local  raft.ServerAddress
	listen *machnet.Channel
	log    hclog.Logger

	consumeCh chan raft.RPC
	queue     chan raft.RPC // requests waiting for raft (see enqueue)
	hbMu      sync.Mutex
	hbFn      func(raft.RPC)

	mu      sync.Mutex
	peers   map[laneKey]*peer
	dialing map[laneKey]chan struct{}
	closed  bool

	shutdown chan struct{}
	wg       sync.WaitGroup
}

var (
	_ raft.Transport   = (*Transport)(nil)
	_ raft.WithPreVote = (*Transport)(nil)
	_ raft.WithClose   = (*Transport)(nil)
)

// NewTransport attaches to the sidecar, listens on cfg.Port and starts serving. Its address
// (raft.ServerAddress) is "LocalIP:Port".
func NewTransport(cfg Config) (*Transport, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if net.ParseIP(cfg.LocalIP).To4() == nil {
		return nil, fmt.Errorf("machnet raft transport: LocalIP %q is not an IPv4 address", cfg.LocalIP)
	}
	ch, err := listenChannel(cfg.Socket, cfg.LocalIP, cfg.Port)
	if err != nil {
		return nil, err
	}
	t := &Transport{
		cfg:       cfg,
		local:     raft.ServerAddress(net.JoinHostPort(cfg.LocalIP, strconv.Itoa(int(cfg.Port)))),
		listen:    ch,
		log:       cfg.Logger,
		consumeCh: make(chan raft.RPC),
		queue:     make(chan raft.RPC, 1024),
		peers:     make(map[laneKey]*peer),
		dialing:   make(map[laneKey]chan struct{}),
		shutdown:  make(chan struct{}),
	}
	t.wg.Add(2)
	go t.serve()
	go t.forward()
	return t, nil
}

// Consumer implements raft.Transport.
func (t *Transport) Consumer() <-chan raft.RPC { return t.consumeCh }

// LocalAddr implements raft.Transport.
func (t *Transport) LocalAddr() raft.ServerAddress { return t.local }

// EncodePeer implements raft.Transport.
func (t *Transport) EncodePeer(_ raft.ServerID, addr raft.ServerAddress) []byte {
	return []byte(addr)
}

// DecodePeer implements raft.Transport.
func (t *Transport) DecodePeer(buf []byte) raft.ServerAddress { return raft.ServerAddress(buf) }

// SetHeartbeatHandler implements raft.Transport.
func (t *Transport) SetHeartbeatHandler(cb func(rpc raft.RPC)) {
	t.hbMu.Lock()
	t.hbFn = cb
	t.hbMu.Unlock()
}

// Close stops serving, closes every channel (the sidecar delivers what was sent, then closes
// their flows: docs/CHANNEL.md §5) and waits for the receiving goroutines. Idempotent.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	close(t.shutdown)
	peers := make([]*peer, 0, len(t.peers))
	for _, p := range t.peers {
		peers = append(peers, p)
	}
	t.peers = map[laneKey]*peer{}
	t.mu.Unlock()
	for _, p := range peers {
		p.fail(raft.ErrTransportShutdown)
	}
	err := t.listen.Close()
	t.wg.Wait()
	return err
}

// ---------------------------------------------------------------- outgoing side

// lane says which of a peer's outgoing flows an RPC takes.
type lane uint8

const (
	laneRPC       lane = iota // votes, AppendEntries with entries, pipelines, TimeoutNow
	laneHeartbeat             // AppendEntries without entries (raft's heartbeat goroutine)
	laneSnapshot              // InstallSnapshot: megabytes that must not delay the others
)

type laneKey struct {
	addr raft.ServerAddress
	lane lane
}

// peer is one outgoing flow (on its own channel) to one peer's lane and its outstanding
// requests.
type peer struct {
	t    *Transport
	key  laneKey
	addr raft.ServerAddress
	ch   *machnet.Channel
	flow machnet.Flow

	mu      sync.Mutex
	pending map[uint64]chan []byte
	err     error // set once the peer failed
}

func (t *Transport) getPeer(target raft.ServerAddress, l lane) (*peer, error) {
	key := laneKey{target, l}
	for {
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			return nil, raft.ErrTransportShutdown
		}
		if p := t.peers[key]; p != nil {
			t.mu.Unlock()
			return p, nil
		}
		if wait := t.dialing[key]; wait != nil {
			t.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-t.shutdown:
				return nil, raft.ErrTransportShutdown
			}
		}
		wait := make(chan struct{})
		t.dialing[key] = wait
		t.mu.Unlock()

		p, err := t.dial(key)
		t.mu.Lock()
		delete(t.dialing, key)
		close(wait)
		if err == nil {
			if t.closed {
				t.mu.Unlock()
				p.fail(raft.ErrTransportShutdown)
				return nil, raft.ErrTransportShutdown
			}
			t.peers[key] = p
		}
		t.mu.Unlock()
		return p, err
	}
}

func (t *Transport) dial(key laneKey) (*peer, error) {
	target := key.addr
	host, portStr, err := net.SplitHostPort(string(target))
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("machnet raft transport: bad port in %q", target)
	}
	ch, err := attach(t.cfg.Socket)
	if err != nil {
		return nil, err
	}
	timeout := t.cfg.Timeout
	if timeout > 5*time.Second {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	flow, err := ch.Connect(ctx, t.cfg.LocalIP, host, uint16(port))
	if err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("machnet raft transport: connect %s: %w", target, err)
	}
	p := &peer{t: t, key: key, addr: target, ch: ch, flow: flow, pending: make(map[uint64]chan []byte)}
	t.wg.Add(1)
	go p.receive()
	return p, nil
}

// receive is the peer channel's only receiver: it routes responses to their waiting RPCs.
func (p *peer) receive() {
	defer p.t.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, _, err := p.ch.Recv(context.Background(), buf)
		if err != nil {
			var me *machnet.Error
			if errors.Is(err, machnet.ErrMessageSize) && errors.As(err, &me) && me.Needed > len(buf) {
				buf = make([]byte, me.Needed)
				continue
			}
			p.fail(err)
			return
		}
		if n < headerLen || buf[0]&respFlag == 0 {
			p.t.log.Warn("dropping malformed response", "peer", p.addr, "len", n)
			continue
		}
		id := binary.LittleEndian.Uint64(buf[1:headerLen])
		p.mu.Lock()
		c := p.pending[id]
		delete(p.pending, id)
		p.mu.Unlock()
		if c != nil {
			c <- append([]byte(nil), buf[:n]...) // buffered: never blocks
		}
	}
}

// fail marks the peer broken, fails its outstanding RPCs, forgets it and closes its channel
// (which ends receive). Safe to call more than once.
func (p *peer) fail(err error) {
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return
	}
	p.err = err
	pending := p.pending
	p.pending = nil
	p.mu.Unlock()
	for _, c := range pending {
		close(c)
	}
	p.t.mu.Lock()
	if p.t.peers[p.key] == p {
		delete(p.t.peers, p.key)
	}
	p.t.mu.Unlock()
	if !errors.Is(err, raft.ErrTransportShutdown) {
		p.t.log.Debug("dropping peer flow", "peer", p.addr, "error", err)
	}
	_ = p.ch.Close()
}

// start registers a new request id and sends msgs (the first carries the header with that id,
// which encode fills in).
func (p *peer) start(msgs ...[]byte) (uint64, chan []byte, error) {
	id := atomic.AddUint64(&p.t.nextID, 1)
	c := make(chan []byte, 1)
	p.mu.Lock()
	if p.err != nil {
		err := p.err
		p.mu.Unlock()
		return 0, nil, err
	}
	p.pending[id] = c
	p.mu.Unlock()
	for _, m := range msgs {
		binary.LittleEndian.PutUint64(m[1:headerLen], id)
		if err := p.ch.Send(p.flow, m); err != nil {
			p.fail(err)
			return 0, nil, err
		}
	}
	return id, c, nil
}

// wait waits for the response to request id and decodes it into resp.
func (p *peer) wait(id uint64, c chan []byte, resp interface{}, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case msg, ok := <-c:
		if !ok {
			p.mu.Lock()
			err := p.err
			p.mu.Unlock()
			return fmt.Errorf("%w: %v", ErrPeerFailed, err)
		}
		return decodeResponse(msg, resp)
	case <-timer.C:
		// The flow may be stuck (the peer's process died): drop it; the next RPC reconnects.
		p.fail(fmt.Errorf("rpc %d timed out after %v", id, timeout))
		return fmt.Errorf("machnet raft transport: rpc to %s timed out after %v", p.addr, timeout)
	case <-p.t.shutdown:
		return raft.ErrTransportShutdown
	}
}

// encode returns a message: the header (kind, id to be filled in) and the msgpack encoding of
// each body value in turn.
func encode(kind byte, bodies ...interface{}) ([]byte, error) {
	var b []byte
	enc := codec.NewEncoderBytes(&b, mh)
	for _, body := range bodies {
		if err := enc.Encode(body); err != nil {
			return nil, err
		}
	}
	out := make([]byte, headerLen+len(b))
	out[0] = kind
	copy(out[headerLen:], b)
	return out, nil
}

func decodeResponse(msg []byte, resp interface{}) error {
	dec := codec.NewDecoderBytes(msg[headerLen:], mh)
	var rpcErr string
	if err := dec.Decode(&rpcErr); err != nil {
		return fmt.Errorf("machnet raft transport: decoding response: %w", err)
	}
	if rpcErr != "" {
		return errors.New(rpcErr)
	}
	if err := dec.Decode(resp); err != nil {
		return fmt.Errorf("machnet raft transport: decoding response: %w", err)
	}
	return nil
}

func (t *Transport) call(target raft.ServerAddress, l lane, kind byte, args, resp interface{}) error {
	msg, err := encode(kind, args)
	if err != nil {
		return err
	}
	p, err := t.getPeer(target, l)
	if err != nil {
		return err
	}
	id, c, err := p.start(msg)
	if err != nil {
		return err
	}
	return p.wait(id, c, resp, t.cfg.Timeout)
}

// AppendEntries implements raft.Transport.
func (t *Transport) AppendEntries(_ raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	l := laneRPC
	if isHeartbeat(args) {
		l = laneHeartbeat
	}
	return t.call(target, l, kindAppendEntries, args, resp)
}

// RequestVote implements raft.Transport.
func (t *Transport) RequestVote(_ raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.call(target, laneRPC, kindRequestVote, args, resp)
}

// RequestPreVote implements raft.WithPreVote.
func (t *Transport) RequestPreVote(_ raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.call(target, laneRPC, kindRequestPreVote, args, resp)
}

// TimeoutNow implements raft.Transport.
func (t *Transport) TimeoutNow(_ raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.call(target, laneRPC, kindTimeoutNow, args, resp)
}

// InstallSnapshot implements raft.Transport: it reads args.Size bytes from data and sends them
// after the request in chunks of at most ChunkSize.
func (t *Transport) InstallSnapshot(_ raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	if args.Size < 0 {
		return fmt.Errorf("machnet raft transport: negative snapshot size %d", args.Size)
	}
	head, err := encode(kindInstallSnapshot, args)
	if err != nil {
		return err
	}
	msgs := [][]byte{head}
	left := args.Size
	for left > 0 {
		n := int64(ChunkSize)
		if left < n {
			n = left
		}
		m := make([]byte, headerLen+int(n))
		m[0] = kindSnapshotChunk
		if _, err := io.ReadFull(data, m[headerLen:]); err != nil {
			return fmt.Errorf("machnet raft transport: reading snapshot: %w", err)
		}
		msgs = append(msgs, m)
		left -= n
	}
	p, err := t.getPeer(target, laneSnapshot)
	if err != nil {
		return err
	}
	id, c, err := p.start(msgs...)
	if err != nil {
		return err
	}
	// Like NetworkTransport: more time for larger snapshots.
	timeout := t.cfg.Timeout * time.Duration(1+args.Size/(8<<20))
	return p.wait(id, c, resp, timeout)
}

// AppendEntriesPipeline implements raft.Transport: requests go out back to back on the peer's
// flow and their responses are delivered in order.
func (t *Transport) AppendEntriesPipeline(_ raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := t.getPeer(target, laneRPC)
	if err != nil {
		return nil, err
	}
	pl := &pipeline{
		p:        p,
		inflight: make(chan *appendFuture, 128),
		doneCh:   make(chan raft.AppendFuture, 128),
		closeCh:  make(chan struct{}),
	}
	go pl.decodeResponses()
	return pl, nil
}

type pipeline struct {
	p         *peer
	inflight  chan *appendFuture
	doneCh    chan raft.AppendFuture
	closeCh   chan struct{}
	closeOnce sync.Once
}

type appendFuture struct {
	start time.Time
	args  *raft.AppendEntriesRequest
	resp  *raft.AppendEntriesResponse
	id    uint64
	c     chan []byte
	err   error
	done  chan struct{}
}

func (f *appendFuture) Error() error                          { <-f.done; return f.err }
func (f *appendFuture) Start() time.Time                      { return f.start }
func (f *appendFuture) Request() *raft.AppendEntriesRequest   { return f.args }
func (f *appendFuture) Response() *raft.AppendEntriesResponse { return f.resp }
func (pl *pipeline) Consumer() <-chan raft.AppendFuture       { return pl.doneCh }
func (pl *pipeline) Close() error                             { pl.closeOnce.Do(func() { close(pl.closeCh) }); return nil }
func (pl *pipeline) closed() bool {
	select {
	case <-pl.closeCh:
		return true
	default:
		return false
	}
}
func (pl *pipeline) shutdown() <-chan struct{} { return pl.p.t.shutdown }

func (pl *pipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	if pl.closed() {
		return nil, raft.ErrPipelineShutdown
	}
	msg, err := encode(kindAppendEntries, args)
	if err != nil {
		return nil, err
	}
	f := &appendFuture{start: time.Now(), args: args, resp: resp, done: make(chan struct{})}
	if f.id, f.c, err = pl.p.start(msg); err != nil {
		return nil, err
	}
	select {
	case pl.inflight <- f:
		return f, nil
	case <-pl.closeCh:
		return nil, raft.ErrPipelineShutdown
	case <-pl.shutdown():
		return nil, raft.ErrTransportShutdown
	}
}

func (pl *pipeline) decodeResponses() {
	for {
		select {
		case f := <-pl.inflight:
			f.err = pl.p.wait(f.id, f.c, f.resp, pl.p.t.cfg.Timeout)
			close(f.done)
			select {
			case pl.doneCh <- f:
			case <-pl.closeCh:
				return
			case <-pl.shutdown():
				return
			}
		case <-pl.closeCh:
			return
		case <-pl.shutdown():
			return
		}
	}
}

// ---------------------------------------------------------------- incoming side

type snapshotKey struct {
	flow machnet.Flow
	id   uint64
}

type partialSnapshot struct {
	req  *raft.InstallSnapshotRequest
	data []byte
}

// serve is the listening channel's only receiver: it decodes requests and hands them to raft
// in arrival order (which keeps a pipeline's AppendEntries in order), except heartbeats, which
// it answers at once through the heartbeat handler (like NetworkTransport, whose heartbeats
// use their own connection); each response is sent from its own goroutine.
func (t *Transport) serve() {
	defer t.wg.Done()
	buf := make([]byte, 64<<10)
	snaps := make(map[snapshotKey]*partialSnapshot)
	for {
		n, flow, err := t.listen.Recv(context.Background(), buf)
		if err != nil {
			var me *machnet.Error
			if errors.Is(err, machnet.ErrMessageSize) && errors.As(err, &me) && me.Needed > len(buf) {
				buf = make([]byte, me.Needed)
				continue
			}
			select {
			case <-t.shutdown:
			default:
				t.log.Error("listening channel failed; no more incoming RPCs", "error", err)
			}
			return
		}
		if n < headerLen {
			t.log.Warn("dropping short message", "from", flow, "len", n)
			continue
		}
		kind, id := buf[0], binary.LittleEndian.Uint64(buf[1:headerLen])
		body := buf[headerLen:n]
		if kind == kindSnapshotChunk {
			key := snapshotKey{flow, id}
			ps := snaps[key]
			if ps == nil {
				t.log.Warn("dropping snapshot chunk without request", "from", flow, "id", id)
				continue
			}
			ps.data = append(ps.data, body...)
			if int64(len(ps.data)) >= ps.req.Size {
				delete(snaps, key)
				if !t.dispatch(flow, kind, id, ps.req, ps.data) {
					return
				}
			}
			continue
		}
		cmd, err := decodeRequest(kind, body)
		if err != nil {
			t.log.Error("dropping undecodable request", "from", flow, "kind", kind, "error", err)
			t.respondNow(flow, kind, id, nil, err)
			continue
		}
		if req, ok := cmd.(*raft.InstallSnapshotRequest); ok && (req.Size < 0 || req.Size > MaxSnapshotSize) {
			t.respondNow(flow, kind, id, nil, fmt.Errorf("snapshot size %d outside 0..%d", req.Size, int64(MaxSnapshotSize)))
			continue
		}
		if req, ok := cmd.(*raft.InstallSnapshotRequest); ok && req.Size > 0 {
			snaps[snapshotKey{flow, id}] = &partialSnapshot{req: req, data: make([]byte, 0, req.Size)}
			continue
		}
		if !t.dispatch(flow, kind, id, cmd, nil) {
			return
		}
	}
}

func decodeRequest(kind byte, body []byte) (interface{}, error) {
	var cmd interface{}
	switch kind {
	case kindAppendEntries:
		cmd = &raft.AppendEntriesRequest{}
	case kindRequestVote:
		cmd = &raft.RequestVoteRequest{}
	case kindRequestPreVote:
		cmd = &raft.RequestPreVoteRequest{}
	case kindInstallSnapshot:
		cmd = &raft.InstallSnapshotRequest{}
	case kindTimeoutNow:
		cmd = &raft.TimeoutNowRequest{}
	default:
		return nil, fmt.Errorf("unknown rpc kind %d", kind)
	}
	if err := codec.NewDecoderBytes(body, mh).Decode(cmd); err != nil {
		return nil, err
	}
	return cmd, nil
}

func isHeartbeat(cmd interface{}) bool {
	req, ok := cmd.(*raft.AppendEntriesRequest)
	if !ok {
		return false
	}
	leaderAddr := req.RPCHeader.Addr
	if len(leaderAddr) == 0 {
		leaderAddr = req.Leader // older peers fill only Leader (deprecated field)
	}
	return req.Term != 0 && leaderAddr != nil && req.PrevLogEntry == 0 &&
		req.PrevLogTerm == 0 && len(req.Entries) == 0 && req.LeaderCommitIndex == 0
}

// dispatch hands one request to raft (or the heartbeat handler) and starts the goroutine that
// sends its response. It returns false when the transport shut down.
func (t *Transport) dispatch(flow machnet.Flow, kind byte, id uint64, cmd interface{}, snap []byte) bool {
	respCh := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{Command: cmd, RespChan: respCh}
	if kind == kindSnapshotChunk || kind == kindInstallSnapshot {
		kind = kindInstallSnapshot
		rpc.Reader = bytes.NewReader(snap)
	}
	handled := false
	if isHeartbeat(cmd) {
		t.hbMu.Lock()
		fn := t.hbFn
		t.hbMu.Unlock()
		if fn != nil {
			fn(rpc)
			handled = true
		}
	}
	if !handled && !t.enqueue(rpc) {
		return false
	}
	go func() {
		select {
		case r := <-respCh:
			t.respondNow(flow, kind, id, r.Response, r.Error)
		case <-t.shutdown:
		}
	}()
	return true
}

// enqueue hands rpc to raft in arrival order without blocking serve (and so the heartbeats
// behind it) while raft's main loop is busy: straight to the consumer when nothing is queued
// and raft is waiting, else through the queue that forward drains. Only serve calls it.
func (t *Transport) enqueue(rpc raft.RPC) bool {
	if atomic.LoadInt64(&t.queued) == 0 {
		select {
		case t.consumeCh <- rpc:
			return true
		default:
		}
	}
	atomic.AddInt64(&t.queued, 1)
	select {
	case t.queue <- rpc:
		return true
	case <-t.shutdown:
		return false
	}
}

// forward moves queued RPCs to raft, in order.
func (t *Transport) forward() {
	defer t.wg.Done()
	for {
		select {
		case rpc := <-t.queue:
			select {
			case t.consumeCh <- rpc:
				atomic.AddInt64(&t.queued, -1)
			case <-t.shutdown:
				return
			}
		case <-t.shutdown:
			return
		}
	}
}

func (t *Transport) respondNow(flow machnet.Flow, kind byte, id uint64, resp interface{}, rpcErr error) {
	errStr := ""
	if rpcErr != nil {
		errStr = rpcErr.Error()
	}
	out, err := encode(kind|respFlag, errStr, resp)
	if err != nil {
		t.log.Error("encoding response", "error", err)
		return
	}
	binary.LittleEndian.PutUint64(out[1:headerLen], id)
	if err := t.listen.Send(flow, out); err != nil {
		select {
		case <-t.shutdown:
		default:
			t.log.Warn("sending response failed", "to", flow, "error", err)
		}
	}
}
