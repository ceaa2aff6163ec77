package machnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Network is the name Machnet addresses give as net.Addr.Network().
const Network = "machnet"

// Addr is a Machnet endpoint (IPv4 address and Machnet port) as a net.Addr.
type Addr struct{ netip.AddrPort }

// Network returns "machnet".
func (Addr) Network() string { return Network }

// StreamConfig tunes the net.Conn adapter (Sidecar.ListenConfig, Sidecar.NewDialer). The zero
// value means the defaults.
type StreamConfig struct {
	// MaxWriteMessage is the largest message a Write sends (default 1 MiB, at most
	// MaxMessageLen): a longer Write is split into messages of this size.
	MaxWriteMessage int
	// ReadBuffer bounds the bytes a Conn keeps received but not yet Read (default 8 MiB). A
	// message is always taken when the buffer is empty, so one message larger than this still
	// fits.
	ReadBuffer int
	// StallTimeout is the policy for a Conn whose buffer is full: the channel's dispatcher
	// waits for that Conn's reader (holding back the other Conns of the channel, so the
	// sidecar applies back-pressure) for at most this long without any Read progress, then
	// resets the Conn (its Read returns ErrReadStalled after the data it holds; the peer sees a
	// reset) and goes on with the others. Default 10 s; a Conn that is read never hits it.
	StallTimeout time.Duration
	// Backlog bounds the accepted Conns a Listener holds for Accept (default 128); further
	// flows are reset.
	Backlog int
	// ListenChannels is how many channels a Listener listens on, as one listen group (default:
	// one per sidecar engine, Sidecar.Engines): the sidecar places channels round-robin over
	// its engines and accepts each flow on one of them, so every engine serves the port. Each
	// channel has its own dispatcher.
	ListenChannels int
	// DispatchWait is how each channel's dispatcher waits for the next message (default
	// WaitNetpoll: in Go's netpoller, like a goroutine blocked on a TCP read, holding no OS
	// thread). WaitInThread waits inside the library on an OS thread of its own: measured
	// faster for a lone ping-pong (one reader, nothing else running: the thread wakes straight
	// into its P) and slower for grpc-go (its loopy writer, reader and handler goroutines take
	// the P away while the thread sleeps); docs/PERFORMANCE.md §23.2.
	DispatchWait WaitMode
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.MaxWriteMessage <= 0 || c.MaxWriteMessage > MaxMessageLen {
		if c.MaxWriteMessage > MaxMessageLen {
			c.MaxWriteMessage = MaxMessageLen
		} else {
			c.MaxWriteMessage = 1 << 20
		}
	}
	if c.ReadBuffer <= 0 {
		c.ReadBuffer = 8 << 20
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 10 * time.Second
	}
	if c.Backlog <= 0 {
		c.Backlog = 128
	}
	return c
}

// ErrReadStalled: the Conn's receive buffer stayed full for StreamConfig.StallTimeout without a
// Read: the Conn was reset so that the channel's other Conns go on.
var ErrReadStalled = errors.New("machnet: conn reset: its receive buffer stayed full (not read)")

// errWriteClosed: Write after CloseWrite.
var errWriteClosed = fmt.Errorf("machnet: write after CloseWrite: %w", syscall.EPIPE)

// flowKey names a flow independent of orientation.
type flowKey struct{ local, remote netip.AddrPort }

func keyOfReceived(f Flow) flowKey  { return flowKey{local: f.Dst(), remote: f.Src()} }
func keyOfConnected(f Flow) flowKey { return flowKey{local: f.Src(), remote: f.Dst()} }

// ----- the per-channel dispatcher -----

// mux owns one channel and demultiplexes its messages and flow events to its Conns (one
// goroutine, sleeping in the library between arrivals: no busy polling). It ends when its owner (a Listener or
// a Dialer) is closed and its last Conn is gone, or when the channel fails.
type mux struct {
	ch   *Channel
	cfg  StreamConfig
	stop context.CancelFunc
	done chan struct{} // closed when the dispatcher returned

	mu        sync.Mutex
	conns     map[flowKey]*Conn
	ownerOpen bool                    // the Listener / Dialer is not closed
	backlog   chan *Conn              // accepted Conns (Listener only)
	early     map[flowKey][]FlowEvent // Dialer: what came for a flow before Connect returned
	earlyData map[flowKey][][]byte
	dialing   int   // Connect calls in progress (Dialer)
	err       error // the channel failed: every Conn and Accept reports it
	shut      bool  // the channel is being closed
}

// newMux starts the dispatcher of ch; accepted flows go to backlog (nil: a Dialer's channel).
func newMux(ch *Channel, cfg StreamConfig, backlog chan *Conn) *mux {
	ch.SetWaitMode(cfg.DispatchWait)
	ctx, cancel := context.WithCancel(context.Background())
	m := &mux{ch: ch, cfg: cfg, stop: cancel, done: make(chan struct{}),
		conns: map[flowKey]*Conn{}, ownerOpen: true, backlog: backlog,
		early: map[flowKey][]FlowEvent{}, earlyData: map[flowKey][][]byte{}}
	go m.run(ctx)
	return m
}

// run is the dispatcher. Between messages it waits as StreamConfig.DispatchWait says, by default
// in Go's netpoller on the channel's eventfd (Channel.RecvAny), as a goroutine blocked on a TCP read does: the wake-up readies it on a
// P that is already running or polling, and the Conn readers it readies then run on that P
// when it parks again. (Waiting inside the library held an OS thread in a cgo call: its P was
// taken away while it slept and every message then cost an extra hand-over between threads.)
// The library's wake-up rule covers a netpoller waiter next to threads sleeping inside it (a
// Write waiting for ring space, a Dial): whoever drains the eventfd re-checks for data and
// re-signals (docs/CHANNEL.md §4).
func (m *mux) run(ctx context.Context) {
	defer close(m.done)
	buf := make([]byte, 64<<10)
	handedOver := false // goroutines were woken since the last Gosched
	for {
		n, ev, ok, err := m.ch.recvAny(buf, 0)
		if !ok && err == nil {
			if handedOver {
				// Let the goroutines just woken run before looking again (a reply may be
				// on its way): cheaper than a netpoller round trip when one is.
				handedOver = false
				runtime.Gosched()
				continue
			}
			n, ev, err = m.ch.RecvAny(ctx, buf) // waits as StreamConfig.DispatchWait says
			ok = err == nil
		}
		var e *Error
		if errors.As(err, &e) && e.Errno == syscall.EMSGSIZE && e.Needed > len(buf) {
			buf = make([]byte, e.Needed)
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if errors.As(err, &e) && e.Errno == syscall.EINTR {
				continue // a Write's deadline or Close interrupted the channel's waits
			}
			m.fail(err)
			return
		}
		if ok {
			m.dispatch(ctx, ev, buf[:n])
			handedOver = true
		}
	}
}

// fail ends every Conn with the channel's error.
func (m *mux) fail(err error) {
	m.mu.Lock()
	m.err = err
	conns := m.conns
	m.conns = map[flowKey]*Conn{}
	m.mu.Unlock()
	for _, c := range conns {
		c.end(err)
	}
	m.mu.Lock()
	m.ownerOpen = false
	closeIt := !m.shut
	m.shut = true
	m.mu.Unlock()
	if closeIt {
		_ = m.ch.Close() // the dispatcher has returned: nobody receives on it any more
	}
}

func (m *mux) dispatch(ctx context.Context, ev FlowEvent, data []byte) {
	key := keyOfReceived(ev.Flow)
	m.mu.Lock()
	c := m.conns[key]
	if c == nil {
		switch {
		case ev.Kind == EventAccepted && m.backlog != nil && m.ownerOpen:
			c = newConn(m, ev.Flow, key)
			select {
			case m.backlog <- c:
				m.conns[key] = c
				m.mu.Unlock()
				return
			default: // backlog full: refuse
			}
			m.mu.Unlock()
			_ = m.ch.AbortFlow(ev.Flow)
			return
		case m.dialing > 0 && ev.Kind != EventAccepted:
			// Connect has not returned yet: keep it for the Conn it makes.
			if ev.Kind == EventMessage {
				m.earlyData[key] = append(m.earlyData[key], append([]byte(nil), data...))
			}
			m.early[key] = append(m.early[key], ev)
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
		if ev.Kind == EventAccepted || ev.Kind == EventMessage || ev.Kind == EventPeerClosed {
			_ = m.ch.AbortFlow(ev.Flow) // nobody will read it
		}
		return
	}
	if terminal(ev.Kind) {
		delete(m.conns, key)
	}
	m.mu.Unlock()
	c.deliver(ctx, ev, data)
	if terminal(ev.Kind) {
		m.released()
	}
}

func terminal(k EventKind) bool {
	switch k {
	case EventReset, EventTimedOut, EventRefused, EventClosed:
		return true
	}
	return false
}

// register makes the Conn of a flow Connect returned, with whatever came for it meanwhile (in
// order: while a Connect is counted in progress the dispatcher keeps adding to early).
func (m *mux) register(f Flow) (*Conn, error) {
	key := keyOfConnected(f)
	c := newConn(m, f, key)
	for {
		m.mu.Lock()
		if m.err != nil {
			err := m.err
			m.mu.Unlock()
			return nil, err
		}
		early, data := m.early[key], m.earlyData[key]
		delete(m.early, key)
		delete(m.earlyData, key)
		if len(early) == 0 {
			c.mu.Lock()
			ended := c.rerr != nil
			c.mu.Unlock()
			if !ended {
				m.conns[key] = c
			}
			m.mu.Unlock()
			return c, nil
		}
		m.mu.Unlock()
		for _, ev := range early {
			var d []byte
			if ev.Kind == EventMessage {
				d, data = data[0], data[1:]
			}
			c.deliver(context.Background(), ev, d)
		}
	}
}

// dialDone: a Connect returned. With none in progress, what was kept for flows nobody
// registered is dropped.
func (m *mux) dialDone() {
	m.mu.Lock()
	m.dialing--
	if m.dialing == 0 {
		m.early = map[flowKey][]FlowEvent{}
		m.earlyData = map[flowKey][][]byte{}
	}
	m.mu.Unlock()
}

// released: a Conn is gone; the channel closes once its owner is closed too and no Conn is left.
func (m *mux) released() {
	m.mu.Lock()
	last := !m.ownerOpen && len(m.conns) == 0 && m.dialing == 0 && !m.shut
	if last {
		m.shut = true
	}
	m.mu.Unlock()
	if last {
		go m.shutdown()
	}
}

// shutdown stops the dispatcher and closes the channel.
func (m *mux) shutdown() {
	m.stop()
	_ = m.ch.Close() // wakes the dispatcher (EBADF)
	<-m.done
}

// closeOwner: the Listener or Dialer is closed: no new Conns; the channel goes with the last.
func (m *mux) closeOwner() {
	m.mu.Lock()
	m.ownerOpen = false
	m.mu.Unlock()
	m.released()
}

// ----- Conn -----

// Conn is a net.Conn over one Machnet flow: a byte stream carried in messages (each Write sends
// messages of at most StreamConfig.MaxWriteMessage bytes; Read returns bytes of the messages
// in order, regardless of their boundaries). It behaves as Go's net package documents for a
// net.Conn, like a *net.TCPConn:
//
//   - Read returns io.EOF after the peer closed (Close or CloseWrite) and every byte was read;
//     a reset flow (the peer aborted, timed out, or its sidecar went away) makes Read and Write
//     fail with an error matching syscall.ECONNRESET (ErrFlowReset);
//   - SetDeadline, SetReadDeadline and SetWriteDeadline make blocked and later calls fail with
//     an error matching os.ErrDeadlineExceeded whose Timeout() is true;
//   - Close unblocks Read and Write in other goroutines (net.ErrClosed), closes the flow
//     gracefully (data written is delivered) and discards what arrives later (a peer that
//     still sends then sees a reset, as with TCP);
//   - CloseWrite half-closes: the peer reads io.EOF, this side goes on reading.
//
// Read, Write and the other methods may be called concurrently; concurrent Writes do not
// interleave their bytes.
type Conn struct {
	m     *mux
	flow  Flow
	key   flowKey
	laddr Addr
	raddr Addr

	mu       sync.Mutex
	changed  chan struct{} // closed (and replaced) when the state below changes
	queue    [][]byte      // received, not yet read
	queued   int           // bytes in queue
	consumed uint64        // bytes read so far (stall detection)
	eof      bool          // the peer closed its side
	rerr     error         // the flow ended with an error (reported after queued data)
	closed   bool          // Close was called
	wclosed  bool          // CloseWrite or Close was called

	wmu     sync.Mutex   // one Write at a time
	writing atomic.Int32 // a Send is in progress (kickWriter interrupts it)
	rdl     *deadline
	wdl     *deadline
	closeCh chan struct{} // closed by Close
}

func newConn(m *mux, f Flow, key flowKey) *Conn {
	c := &Conn{m: m, flow: f, key: key, laddr: Addr{key.local}, raddr: Addr{key.remote},
		changed: make(chan struct{}), closeCh: make(chan struct{})}
	c.rdl = newDeadline(nil)
	c.wdl = newDeadline(c.kickWriter)
	return c
}

// notify wakes every goroutine waiting on the state (call with mu held).
func (c *Conn) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// deliver hands one message or event of this flow to the Conn (the dispatcher calls it).
func (c *Conn) deliver(ctx context.Context, ev FlowEvent, data []byte) {
	switch ev.Kind {
	case EventMessage:
		c.enqueue(ctx, data)
	case EventPeerClosed:
		c.mu.Lock()
		c.eof = true
		c.notify()
		c.mu.Unlock()
	case EventClosed:
		if ev.Errno == 0 {
			c.mu.Lock()
			c.eof = true
			c.notify()
			c.mu.Unlock()
			return
		}
		c.end(ev.Err())
	case EventReset, EventTimedOut, EventRefused, EventRequestFailed:
		c.end(ev.Err())
	}
}

// enqueue queues a message for Read, applying the ReadBuffer / StallTimeout policy.
func (c *Conn) enqueue(ctx context.Context, data []byte) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		// Nobody will read it: as TCP answers data for a closed socket, reset the flow.
		_ = c.m.ch.AbortFlow(c.flow)
		return
	}
	var timer *time.Timer
	for c.queued > 0 && c.queued+len(data) > c.m.cfg.ReadBuffer && c.rerr == nil && !c.closed {
		if timer == nil {
			timer = time.NewTimer(c.m.cfg.StallTimeout)
			defer timer.Stop()
		}
		progress, changed := c.consumed, c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return
		case <-timer.C:
			c.mu.Lock()
			if c.consumed == progress {
				c.mu.Unlock()
				_ = c.m.ch.AbortFlow(c.flow)
				c.end(ErrReadStalled)
				return
			}
			timer.Reset(c.m.cfg.StallTimeout)
			c.mu.Unlock()
		}
		c.mu.Lock()
	}
	if c.rerr == nil && !c.closed {
		c.queue = append(c.queue, append([]byte(nil), data...))
		c.queued += len(data)
		c.notify()
	}
	c.mu.Unlock()
}

// end records that the flow ended with err (Read reports it after the queued data).
func (c *Conn) end(err error) {
	c.mu.Lock()
	if c.rerr == nil {
		c.rerr = err
	}
	c.notify()
	c.mu.Unlock()
	c.kickWriter()
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: Network, Source: c.laddr, Addr: c.raddr, Err: err}
}

// Read reads bytes the peer wrote (see Conn).
func (c *Conn) Read(b []byte) (int, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, c.opError("read", net.ErrClosed)
		}
		if c.rdl.hasPassed() {
			c.mu.Unlock()
			return 0, c.opError("read", os.ErrDeadlineExceeded)
		}
		if len(b) == 0 {
			c.mu.Unlock()
			return 0, nil
		}
		if c.queued > 0 {
			n := 0
			for n < len(b) && len(c.queue) > 0 {
				k := copy(b[n:], c.queue[0])
				n += k
				if k == len(c.queue[0]) {
					c.queue[0] = nil
					c.queue = c.queue[1:]
				} else {
					c.queue[0] = c.queue[0][k:]
				}
			}
			c.queued -= n
			c.consumed += uint64(n)
			c.notify()
			c.mu.Unlock()
			return n, nil
		}
		if c.rerr != nil {
			err := c.rerr
			c.mu.Unlock()
			return 0, c.opError("read", err)
		}
		if c.eof {
			c.mu.Unlock()
			return 0, io.EOF
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-c.rdl.wait():
		}
	}
}

// Write writes b as messages of at most StreamConfig.MaxWriteMessage bytes (see Conn). It
// blocks while the sidecar applies back-pressure, until the write deadline or Close.
func (c *Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	max := c.m.cfg.MaxWriteMessage
	n := 0
	for {
		if err := c.writeErr(); err != nil {
			return n, c.opError("write", err)
		}
		if n == len(b) {
			return n, nil
		}
		end := n + max
		if end > len(b) {
			end = len(b)
		}
		c.writing.Add(1)
		err := c.m.ch.Send(c.flow, b[n:end])
		c.writing.Add(-1)
		if err != nil {
			var e *Error
			if errors.As(err, &e) && e.Errno == syscall.EINTR {
				continue // another Conn's deadline or Close (or ours: writeErr tells)
			}
			if werr := c.writeErr(); werr != nil {
				return n, c.opError("write", werr)
			}
			if errors.As(err, &e) && (e.Errno == syscall.ENOTCONN || e.Errno == syscall.EPIPE) {
				err = fmt.Errorf("machnet: flow reset: %w", syscall.ECONNRESET)
			}
			return n, c.opError("write", err)
		}
		n = end
	}
}

// writeErr is why a Write cannot go on (nil: it can).
func (c *Conn) writeErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return net.ErrClosed
	case c.wdl.hasPassed():
		return os.ErrDeadlineExceeded
	case c.rerr != nil:
		return c.rerr
	case c.wclosed:
		return errWriteClosed
	}
	return nil
}

// kickWriter interrupts a Send blocked under back-pressure once the write deadline passed or
// the Conn closed, and again a little later while it is still blocked (an interrupt reaches
// only calls already waiting; the other Conns' Sends on the channel retry).
func (c *Conn) kickWriter() {
	if c.writing.Load() == 0 {
		return
	}
	c.m.ch.interrupt()
	go func() {
		for wait := time.Millisecond; c.writing.Load() > 0; wait *= 2 {
			if c.writeErr() == nil {
				return
			}
			time.Sleep(wait)
			c.m.ch.interrupt()
			if wait > 100*time.Millisecond {
				wait = 100 * time.Millisecond
			}
		}
	}()
}

// Close closes the Conn (see Conn). Closing twice returns an error matching net.ErrClosed.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.opError("close", net.ErrClosed)
	}
	c.closed = true
	wasWClosed := c.wclosed
	c.wclosed = true
	ended := c.rerr != nil
	c.queue, c.queued = nil, 0
	c.notify()
	c.mu.Unlock()
	close(c.closeCh)
	c.kickWriter()
	if !wasWClosed && !ended {
		_ = c.m.ch.CloseFlow(c.flow)
	}
	if ended {
		c.m.mu.Lock()
		delete(c.m.conns, c.key)
		c.m.mu.Unlock()
		c.m.released()
	}
	return nil
}

// CloseWrite shuts down the writing side (like *net.TCPConn.CloseWrite): the peer's Read
// returns io.EOF once it read everything written before; this side can still Read.
func (c *Conn) CloseWrite() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.opError("close", net.ErrClosed)
	}
	if c.wclosed || c.rerr != nil {
		c.mu.Unlock()
		return nil
	}
	c.wclosed = true
	c.mu.Unlock()
	c.wmu.Lock() // after a Write in progress
	defer c.wmu.Unlock()
	if err := c.m.ch.CloseFlow(c.flow); err != nil {
		return c.opError("close", err)
	}
	return nil
}

// Abort resets the flow at once: data not yet delivered is discarded and the peer's Read and
// Write fail with a reset error (like closing a TCP socket with SO_LINGER 0).
func (c *Conn) Abort() error {
	err := c.m.ch.AbortFlow(c.flow)
	_ = c.Close()
	if err != nil {
		return c.opError("abort", err)
	}
	return nil
}

// LocalAddr is this side's Machnet address (Network() "machnet").
func (c *Conn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr is the peer's Machnet address (Network() "machnet").
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline for pending and future Reads (zero: none).
func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opError("set", net.ErrClosed)
	}
	c.rdl.set(t)
	return nil
}

// SetWriteDeadline sets the deadline for pending and future Writes (zero: none). A Write that
// times out may have written part of its bytes (its count says how many).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opError("set", net.ErrClosed)
	}
	c.wdl.set(t)
	return nil
}

func (c *Conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Flow is the Machnet flow under the Conn (Src = this side).
func (c *Conn) Flow() Flow {
	return Flow{SrcIP: ipBits(c.key.local), DstIP: ipBits(c.key.remote),
		SrcPort: c.key.local.Port(), DstPort: c.key.remote.Port()}
}

func ipBits(a netip.AddrPort) uint32 {
	b := a.Addr().As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// ----- Listener -----

// Listener is a net.Listener of Machnet flows to one port (Sidecar.Listen).
type Listener struct {
	muxes   []*mux
	backlog chan *Conn
	addr    Addr
	once    sync.Once
	close   chan struct{}
	dead    chan struct{} // closed once every channel's dispatcher ended
}

// Listen accepts Machnet flows to port (localIP: the sidecar's address or "0.0.0.0") on one
// channel per sidecar engine (a listen group; StreamConfig.ListenChannels) and returns them as
// net.Conns (*Conn) from Accept. Closing the Listener stops accepting; Conns accepted before go
// on (each channel is closed with its last Conn).
func (s *Sidecar) Listen(localIP string, port uint16) (*Listener, error) {
	return s.ListenConfig(localIP, port, StreamConfig{})
}

// ListenConfig is Listen with a StreamConfig.
func (s *Sidecar) ListenConfig(localIP string, port uint16, cfg StreamConfig) (*Listener, error) {
	cfg = cfg.withDefaults()
	n := cfg.ListenChannels
	if n <= 0 {
		e, err := s.Engines()
		if err != nil {
			return nil, err
		}
		n = e
	}
	ip, err := netip.ParseAddr(localIP)
	if err != nil {
		ip = netip.IPv4Unspecified()
	}
	l := &Listener{backlog: make(chan *Conn, cfg.Backlog), addr: Addr{netip.AddrPortFrom(ip, port)},
		close: make(chan struct{}), dead: make(chan struct{})}
	var chans []*Channel
	for i := 0; i < n; i++ {
		ch, err := s.Attach()
		if err == nil {
			if err = ch.Listen(localIP, port); err != nil {
				_ = ch.Close()
			}
		}
		if err != nil {
			for _, c := range chans {
				_ = c.Close()
			}
			return nil, err
		}
		chans = append(chans, ch)
	}
	for _, ch := range chans {
		l.muxes = append(l.muxes, newMux(ch, cfg, l.backlog))
	}
	go func() {
		for _, m := range l.muxes {
			<-m.done
		}
		close(l.dead)
	}()
	return l, nil
}

// Channels is how many channels (engines) the Listener listens on.
func (l *Listener) Channels() int { return len(l.muxes) }

// Accept waits for the next flow (a *Conn).
func (l *Listener) Accept() (net.Conn, error) {
	if isClosed(l.close) {
		return nil, &net.OpError{Op: "accept", Net: Network, Addr: l.addr, Err: net.ErrClosed}
	}
	select {
	case c := <-l.backlog:
		return c, nil
	case <-l.close:
		return nil, &net.OpError{Op: "accept", Net: Network, Addr: l.addr, Err: net.ErrClosed}
	case <-l.dead:
		var err error = net.ErrClosed
		for _, m := range l.muxes {
			m.mu.Lock()
			if m.err != nil {
				err = m.err
			}
			m.mu.Unlock()
		}
		return nil, &net.OpError{Op: "accept", Net: Network, Addr: l.addr, Err: err}
	}
}

// Close stops accepting: pending Accepts return net.ErrClosed, flows not yet accepted are reset.
func (l *Listener) Close() error {
	first := false
	l.once.Do(func() {
		first = true
		close(l.close)
		for _, m := range l.muxes {
			m.closeOwner()
		}
		for {
			select {
			case c := <-l.backlog:
				_ = c.Abort()
				continue
			default:
			}
			break
		}
	})
	if !first {
		return &net.OpError{Op: "close", Net: Network, Addr: l.addr, Err: net.ErrClosed}
	}
	return nil
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.addr }

// ----- Dialer -----

// Dialer opens Machnet flows as net.Conns; its DialContext fits http.Transport.DialContext and
// grpc.WithContextDialer. All its Conns share one channel (and its dispatcher). Safe for
// concurrent use.
type Dialer struct {
	s   *Sidecar
	cfg StreamConfig

	mu     sync.Mutex
	m      *mux
	closed bool
}

// NewDialer returns a Dialer on this sidecar.
func (s *Sidecar) NewDialer(cfg StreamConfig) *Dialer {
	return &Dialer{s: s, cfg: cfg.withDefaults()}
}

// DialContext opens a flow to address ("ip:port" or "host:port"; host resolved to IPv4) and
// returns it as a net.Conn (*Conn). network is not looked at ("tcp" from net/http, "machnet",
// ...). ctx bounds the connect.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	opErr := func(err error) error { return &net.OpError{Op: "dial", Net: Network, Err: err} }
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, opErr(err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, opErr(fmt.Errorf("bad Machnet port %q", portStr))
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ips, lerr := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
		if lerr != nil || len(ips) == 0 {
			return nil, opErr(fmt.Errorf("cannot resolve %q to IPv4: %v", host, lerr))
		}
		ip = ips[0]
	}
	ip = ip.Unmap()
	if !ip.Is4() {
		return nil, opErr(fmt.Errorf("%s is not an IPv4 address", ip))
	}
	m, err := d.mux()
	if err != nil {
		return nil, opErr(err)
	}
	f, err := m.ch.Connect(ctx, "0.0.0.0", ip.String(), uint16(port))
	if err != nil {
		m.dialDone()
		m.released()
		return nil, opErr(err)
	}
	c, err := m.register(f)
	m.dialDone()
	if err != nil {
		_ = m.ch.AbortFlow(f)
		m.released()
		return nil, opErr(err)
	}
	return c, nil
}

// mux is the Dialer's channel (made on first use, again after it failed), with a Connect
// counted in progress.
func (d *Dialer) mux() (*mux, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, net.ErrClosed
	}
	if d.m != nil {
		d.m.mu.Lock()
		ok := d.m.err == nil && !d.m.shut
		if ok {
			d.m.dialing++
		}
		d.m.mu.Unlock()
		if ok {
			return d.m, nil
		}
		d.m.closeOwner()
	}
	ch, err := d.s.Attach()
	if err != nil {
		return nil, err
	}
	d.m = newMux(ch, d.cfg, nil)
	d.m.dialing++
	return d.m, nil
}

// Close stops dialing; Conns dialed before go on (their channel is closed with the last).
func (d *Dialer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return net.ErrClosed
	}
	d.closed = true
	if d.m != nil {
		d.m.closeOwner()
	}
	return nil
}

// DialContext dials with the sidecar's default Dialer (made on first use, closed with the
// Sidecar): usable as http.Transport.DialContext and with grpc.WithContextDialer.
func (s *Sidecar) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	s.dialOnce.Do(func() { s.dialer = s.NewDialer(StreamConfig{}) })
	return s.dialer.DialContext(ctx, network, address)
}
