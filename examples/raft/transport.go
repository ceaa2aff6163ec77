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
// for concurrent use). The receivers take messages and flow events in order
// (machnet.Channel.RecvAny): a lane whose flow the peer closes, resets or lets time out fails
// its outstanding RPCs at once, as a TCP connection's EOF does for raft's NetworkTransport. A
// lane that failed or whose RPC timed out is dropped and reconnected on the next RPC.
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

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	machnet "github.com/machnet-rs/machnet-rs/go"
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

// ErrPeerFailed is returned for RPCs whose peer flow ended while they were outstanding. The
// error also matches the flow's own (machnet.ErrPeerClosed, machnet.ErrFlowReset,
// machnet.ErrFlowTimedOut, ...) with errors.Is.
var ErrPeerFailed = errors.New("machnet raft transport: peer flow failed")

// ErrPeerDisconnected is returned for RPCs to a peer that WithPeers' Disconnect or
// DisconnectAll took away (until Connect).
var ErrPeerDisconnected = errors.New("machnet raft transport: peer disconnected")

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

// closeDrainLimit bounds how long Close waits for responses raft already gave to be sent.
const closeDrainLimit = time.Second

// DefaultTimeout is Config.Timeout's default.
const DefaultTimeout = 10 * time.Second

// Config configures a Transport. MaxRPCsInFlight, TimeoutScale and ServerAddressProvider mean
// what they mean in raft.NetworkTransportConfig.
type Config struct {
	Socket  string        // the sidecar's control socket ("" = $MACHNET_SOCKET or the default)
	LocalIP string        // the sidecar's IPv4 address (what peers connect to)
	Port    uint16        // the Machnet port this node listens on
	Timeout time.Duration // per RPC (default DefaultTimeout; snapshots: see TimeoutScale)
	Logger  hclog.Logger  // default: a null logger

	// MaxRPCsInFlight bounds the AppendEntries a pipeline has outstanding: 0 means
	// raft.DefaultMaxRPCsInFlight (2); 1 disables pipelining (AppendEntriesPipeline returns
	// raft.ErrPipelineReplicationNotSupported and raft sends every AppendEntries on its own);
	// n >= 2 lets the n-th AppendEntries of a pipeline block until the first one's response
	// came.
	MaxRPCsInFlight int

	// TimeoutScale: an InstallSnapshot of Size bytes gets Timeout * Size/TimeoutScale (at
	// least Timeout). Default raft.DefaultTimeoutScale (256 KiB).
	TimeoutScale int

	// ServerAddressProvider, if set, gives the address of a server by its ID: RPCs go there
	// instead of to the address raft passes (which stays the fallback when it fails).
	ServerAddressProvider raft.ServerAddressProvider
}

// Transport is a raft.Transport (with raft.WithPreVote, raft.WithClose and raft.WithPeers)
// over Machnet.
type Transport struct {
	nextID uint64 // atomic; first in the struct for 64-bit alignment on 32-bit platforms
	queued int64  // atomic: requests in queue or held by forward

	cfg         Config
	maxInFlight int
	local       raft.ServerAddress
	listen      *machnet.Channel
	log         hclog.Logger
	incoming    incomingFlows // the listening channel's flows (CloseStreams)
	responders  sync.WaitGroup

	consumeCh chan raft.RPC
	queue     chan raft.RPC // requests waiting for raft (see enqueue)
	hbMu      sync.Mutex
	hbFn      func(raft.RPC)

	mu      sync.Mutex
	peers   map[laneKey]*peer
	dialing map[laneKey]chan struct{}
	reach   reachability // raft.WithPeers: which peers RPCs may go to
	closed  bool

	shutdown chan struct{}
	wg       sync.WaitGroup
}

var (
	_ raft.Transport   = (*Transport)(nil)
	_ raft.WithPreVote = (*Transport)(nil)
	_ raft.WithClose   = (*Transport)(nil)
	_ raft.WithPeers   = (*Transport)(nil)
)

// NewTransport attaches to the sidecar, listens on cfg.Port and starts serving. Its address
// (raft.ServerAddress) is "LocalIP:Port".
func NewTransport(cfg Config) (*Transport, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.TimeoutScale <= 0 {
		cfg.TimeoutScale = raft.DefaultTimeoutScale
	}
	maxInFlight := cfg.MaxRPCsInFlight
	if maxInFlight <= 0 {
		maxInFlight = raft.DefaultMaxRPCsInFlight
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
		cfg:         cfg,
		maxInFlight: maxInFlight,
		local:       raft.ServerAddress(net.JoinHostPort(cfg.LocalIP, strconv.Itoa(int(cfg.Port)))),
		listen:      ch,
		log:         cfg.Logger,
		consumeCh:   make(chan raft.RPC),
		queue:       make(chan raft.RPC, 1024),
		peers:       make(map[laneKey]*peer),
		dialing:     make(map[laneKey]chan struct{}),
		shutdown:    make(chan struct{}),
	}
	t.incoming.flows = make(map[machnet.Flow]struct{})
	t.wg.Add(2)
	go t.serve()
	go t.forward()
	return t, nil
}

// Consumer implements raft.Transport.
func (t *Transport) Consumer() <-chan raft.RPC { return t.consumeCh }

// LocalAddr implements raft.Transport.
func (t *Transport) LocalAddr() raft.ServerAddress { return t.local }

// EncodePeer implements raft.Transport (with the ServerAddressProvider's address if it has one).
func (t *Transport) EncodePeer(id raft.ServerID, addr raft.ServerAddress) []byte {
	return []byte(t.resolve(id, addr))
}

// resolve is the address RPCs to server id go to: the ServerAddressProvider's, else target.
func (t *Transport) resolve(id raft.ServerID, target raft.ServerAddress) raft.ServerAddress {
	if t.cfg.ServerAddressProvider == nil {
		return target
	}
	addr, err := t.cfg.ServerAddressProvider.ServerAddr(id)
	if err != nil {
		t.log.Warn("unable to get address for server, using fallback address", "id", id, "fallback", target, "error", err)
		return target
	}
	return addr
}

// DecodePeer implements raft.Transport.
func (t *Transport) DecodePeer(buf []byte) raft.ServerAddress { return raft.ServerAddress(buf) }

// SetHeartbeatHandler implements raft.Transport.
func (t *Transport) SetHeartbeatHandler(cb func(rpc raft.RPC)) {
	t.hbMu.Lock()
	t.hbFn = cb
	t.hbMu.Unlock()
}

// Close stops serving, fails the outgoing RPCs still waiting, sends the responses raft has
// already given to incoming requests, then closes every channel (the sidecar delivers what was
// sent, then closes their flows: docs/CHANNEL.md §5, so peers waiting for other responses
// fail at once) and waits for the receiving goroutines. Idempotent.
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
	// A response stuck behind a peer that stopped reading (back-pressure) must not hold Close
	// up for long: after closeDrainLimit the channel closes anyway, failing that Send.
	drained := make(chan struct{})
	go func() { t.responders.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(closeDrainLimit):
		t.log.Warn("closing with responses still being sent", "after", closeDrainLimit)
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
		if !t.reach.allows(target) {
			t.mu.Unlock()
			return nil, fmt.Errorf("%w: %s", ErrPeerDisconnected, target)
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
			if t.closed || !t.reach.allows(target) {
				closed := t.closed
				t.mu.Unlock()
				if closed {
					p.fail(raft.ErrTransportShutdown)
					return nil, raft.ErrTransportShutdown
				}
				p.fail(ErrPeerDisconnected)
				return nil, fmt.Errorf("%w: %s", ErrPeerDisconnected, target)
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

// receive is the peer channel's only receiver: it routes responses to their waiting RPCs and
// fails them all the moment the flow ends (the channel has this one flow, so every event is
// about it: the peer closed it, reset it or stopped answering).
func (p *peer) receive() {
	defer p.t.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, ev, err := p.ch.RecvAny(context.Background(), buf)
		if err != nil {
			var me *machnet.Error
			if errors.Is(err, machnet.ErrMessageSize) && errors.As(err, &me) && me.Needed > len(buf) {
				buf = make([]byte, me.Needed)
				continue
			}
			p.fail(err)
			return
		}
		if ev.Kind != machnet.EventMessage {
			p.fail(ev.Err())
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
			if errors.Is(err, raft.ErrTransportShutdown) || errors.Is(err, ErrPeerDisconnected) {
				return err
			}
			return fmt.Errorf("%w: %w", ErrPeerFailed, err)
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

func (t *Transport) call(id raft.ServerID, target raft.ServerAddress, l lane, kind byte, args, resp interface{}) error {
	msg, err := encode(kind, args)
	if err != nil {
		return err
	}
	p, err := t.getPeer(t.resolve(id, target), l)
	if err != nil {
		return err
	}
	rid, c, err := p.start(msg)
	if err != nil {
		return err
	}
	return p.wait(rid, c, resp, t.cfg.Timeout)
}

// AppendEntries implements raft.Transport.
func (t *Transport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	l := laneRPC
	if isHeartbeat(args) {
		l = laneHeartbeat
	}
	return t.call(id, target, l, kindAppendEntries, args, resp)
}

// RequestVote implements raft.Transport.
func (t *Transport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.call(id, target, laneRPC, kindRequestVote, args, resp)
}

// RequestPreVote implements raft.WithPreVote.
func (t *Transport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.call(id, target, laneRPC, kindRequestPreVote, args, resp)
}

// TimeoutNow implements raft.Transport.
func (t *Transport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.call(id, target, laneRPC, kindTimeoutNow, args, resp)
}

// InstallSnapshot implements raft.Transport: it reads args.Size bytes from data and sends them
// after the request in chunks of at most ChunkSize.
func (t *Transport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
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
	p, err := t.getPeer(t.resolve(id, target), laneSnapshot)
	if err != nil {
		return err
	}
	rid, c, err := p.start(msgs...)
	if err != nil {
		return err
	}
	return p.wait(rid, c, resp, t.snapshotTimeout(args.Size))
}

// snapshotTimeout is NetworkTransport's: Timeout scaled by size/TimeoutScale, at least Timeout.
func (t *Transport) snapshotTimeout(size int64) time.Duration {
	timeout := t.cfg.Timeout * time.Duration(size/int64(t.cfg.TimeoutScale))
	if timeout < t.cfg.Timeout {
		timeout = t.cfg.Timeout
	}
	return timeout
}

// AppendEntriesPipeline implements raft.Transport: requests go out back to back on the peer's
// flow and their responses are delivered in order. As in NetworkTransport, at most
// MaxRPCsInFlight are outstanding: the request beyond that is sent, then its AppendEntries
// blocks until the oldest one's response came; with MaxRPCsInFlight 1 there is no pipeline.
func (t *Transport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	if t.maxInFlight < 2 {
		return nil, raft.ErrPipelineReplicationNotSupported
	}
	p, err := t.getPeer(t.resolve(id, target), laneRPC)
	if err != nil {
		return nil, err
	}
	// NetworkTransport's buffers: decodeResponses holds one request while it waits for its
	// response and AppendEntries sends before it queues, so maxInFlight-2 more fit.
	pl := &pipeline{
		p:        p,
		inflight: make(chan *appendFuture, t.maxInFlight-2),
		doneCh:   make(chan raft.AppendFuture, t.maxInFlight-2),
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
		if errors.Is(err, raft.ErrTransportShutdown) {
			return nil, err
		}
		// The flow ended: like a request NetworkTransport writes into a connection the peer
		// closed, this one gets a future that fails with the flow's end (raft's pipeline
		// consumer learns of it from the futures, in order).
		f.c = make(chan []byte)
		close(f.c)
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
// use their own connection); each response is sent from its own goroutine. It takes flow
// events in order with the messages: a flow whose peer closed it is closed here too (its
// requests' responses have nobody to go to) and a flow that ended takes its partly received
// snapshots with it.
func (t *Transport) serve() {
	defer t.wg.Done()
	buf := make([]byte, 64<<10)
	snaps := make(map[snapshotKey]*partialSnapshot)
	forget := func(flow machnet.Flow) {
		t.incoming.remove(flow)
		for k := range snaps {
			if k.flow == flow {
				delete(snaps, k)
			}
		}
	}
	for {
		n, ev, err := t.listen.RecvAny(context.Background(), buf)
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
		flow := ev.Flow
		switch ev.Kind {
		case machnet.EventMessage:
		case machnet.EventAccepted:
			t.incoming.add(flow)
			continue
		case machnet.EventPeerClosed:
			forget(flow)
			_ = t.listen.CloseFlow(flow)
			continue
		case machnet.EventRequestFailed: // a response raced with the flow's end: its event follows
			t.log.Debug("response not sent", "to", flow, "error", ev.Err())
			continue
		default: // the flow ended
			forget(flow)
			continue
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
			if int64(len(ps.data)+len(body)) > ps.req.Size {
				t.log.Warn("dropping snapshot larger than announced", "from", flow, "id", id)
				delete(snaps, key)
				t.respondNow(flow, kindInstallSnapshot, id, nil, fmt.Errorf("snapshot data exceeds its size %d", ps.req.Size))
				continue
			}
			ps.data = append(ps.data, body...)
			if int64(len(ps.data)) == ps.req.Size {
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
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return false
	}
	t.responders.Add(1) // under mu, so that it never races with Close's Wait
	t.mu.Unlock()
	go func() {
		defer t.responders.Done()
		select {
		case r := <-respCh:
			t.respondNow(flow, kind, id, r.Response, r.Error)
		case <-t.shutdown:
			// Close waits for this goroutine before it closes the channel: a response raft
			// gave by now still goes out.
			select {
			case r := <-respCh:
				t.respondNow(flow, kind, id, r.Response, r.Error)
			default:
			}
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
