package machnetraft

import (
	"errors"
	"sync"

	"github.com/hashicorp/raft"
	machnet "github.com/machnet-rs/machnet-rs/go"
)

// reachability is raft.WithPeers' state: which peers RPCs may go to. A new transport reaches
// every address; Disconnect bars one until Connect, DisconnectAll bars all but those connected
// afterwards (raft's InmemTransport behaves so; its tests partition clusters this way).
type reachability struct {
	barAll    bool
	connected map[raft.ServerAddress]bool // allowed despite barAll
	barred    map[raft.ServerAddress]bool
}

func (r *reachability) allows(addr raft.ServerAddress) bool {
	if r.connected[addr] {
		return true
	}
	return !r.barAll && !r.barred[addr]
}

func (r *reachability) connect(addr raft.ServerAddress) {
	if r.connected == nil {
		r.connected = make(map[raft.ServerAddress]bool)
	}
	r.connected[addr] = true
	delete(r.barred, addr)
}

func (r *reachability) disconnect(addr raft.ServerAddress) {
	if r.barred == nil {
		r.barred = make(map[raft.ServerAddress]bool)
	}
	r.barred[addr] = true
	delete(r.connected, addr)
}

func (r *reachability) disconnectAll() {
	*r = reachability{barAll: true}
}

// incomingFlows is the set of flows peers opened to the listening channel.
type incomingFlows struct {
	mu    sync.Mutex
	flows map[machnet.Flow]struct{}
}

func (f *incomingFlows) add(flow machnet.Flow) {
	f.mu.Lock()
	f.flows[flow] = struct{}{}
	f.mu.Unlock()
}

func (f *incomingFlows) remove(flow machnet.Flow) {
	f.mu.Lock()
	delete(f.flows, flow)
	f.mu.Unlock()
}

func (f *incomingFlows) list() []machnet.Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]machnet.Flow, 0, len(f.flows))
	for flow := range f.flows {
		out = append(out, flow)
	}
	return out
}

// Connect implements raft.WithPeers: RPCs may go to peer again (after Disconnect or
// DisconnectAll), and its flows for RPCs and heartbeats are opened now rather than on the
// first RPC (in the background: a failure is logged, and the next RPC tries again). The
// transport argument is not used (raft passes nil for non-loopback transports).
func (t *Transport) Connect(peer raft.ServerAddress, _ raft.Transport) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.reach.connect(peer)
	t.wg.Add(1)
	t.mu.Unlock()
	go func() {
		defer t.wg.Done()
		for _, l := range []lane{laneRPC, laneHeartbeat} {
			if _, err := t.getPeer(peer, l); err != nil {
				t.log.Debug("connecting to peer", "peer", peer, "error", err)
				return
			}
		}
	}()
}

// Disconnect implements raft.WithPeers: the flows to peer close (RPCs waiting on them fail at
// once) and RPCs to it fail with ErrPeerDisconnected until Connect.
func (t *Transport) Disconnect(addr raft.ServerAddress) {
	t.mu.Lock()
	t.reach.disconnect(addr)
	var drop []*peer
	for k, p := range t.peers {
		if k.addr == addr {
			drop = append(drop, p)
		}
	}
	t.mu.Unlock()
	for _, p := range drop {
		p.fail(ErrPeerDisconnected)
	}
}

// DisconnectAll implements raft.WithPeers: Disconnect for every peer, including those this
// transport has not talked to yet.
func (t *Transport) DisconnectAll() {
	t.mu.Lock()
	t.reach.disconnectAll()
	t.mu.Unlock()
	t.dropOutgoing(ErrPeerDisconnected)
}

// dropOutgoing closes every outgoing flow, failing the RPCs waiting on them with err.
func (t *Transport) dropOutgoing(err error) {
	t.mu.Lock()
	drop := make([]*peer, 0, len(t.peers))
	for _, p := range t.peers {
		drop = append(drop, p)
	}
	t.mu.Unlock()
	for _, p := range drop {
		p.fail(err)
	}
}

// ErrStreamsClosed is what RPCs waiting on an outgoing flow fail with when CloseStreams closes it.
var ErrStreamsClosed = errors.New("machnet raft transport: streams closed")

// CloseStreams closes every flow of the transport, as NetworkTransport.CloseStreams closes its
// pooled connections and the connections it serves: outgoing RPCs waiting on a flow fail at
// once; peers with requests outstanding here see their flow close. Later RPCs open new flows.
// raft calls it when a node restores a user snapshot.
func (t *Transport) CloseStreams() {
	t.dropOutgoing(ErrStreamsClosed)
	for _, flow := range t.incoming.list() {
		t.incoming.remove(flow)
		_ = t.listen.CloseFlow(flow)
	}
}
