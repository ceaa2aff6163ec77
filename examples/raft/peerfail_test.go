package machnetraft

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	machnet "github.com/machnet-rs/machnet-rs/go"
)

// rpcTimeout is the RPC timeout of the peer-failure tests: large, so that an RPC returning
// before it shows that the failure was noticed, not timed out.
const rpcTimeout = 10 * time.Second

// holderEnv makes the test binary, run as a child process, a raft peer that holds every RPC
// it receives without answering (TestHelperHoldingPeer).
const holderEnv = "MACHNET_RAFT_HOLDER"

// TestHelperHoldingPeer is not a test: run as a child process with holderEnv set to
// "socket,ip,port" it listens there with a Transport, prints "READY", then "GOT" for each RPC
// (heartbeats included) and never answers, until it is killed.
func TestHelperHoldingPeer(t *testing.T) {
	spec := os.Getenv(holderEnv)
	if spec == "" {
		t.Skip("helper process only")
	}
	f := strings.Split(spec, ",")
	p, _ := strconv.Atoi(f[2])
	tr, err := NewTransport(Config{Socket: f[0], LocalIP: f[1], Port: uint16(p)})
	if err != nil {
		fmt.Println("FAILED", err)
		os.Exit(1)
	}
	fmt.Println("READY")
	var held []raft.RPC
	for rpc := range tr.Consumer() {
		held = append(held, rpc)
		fmt.Println("GOT")
	}
}

// waitingRPCs starts, from a to target, one AppendEntries, one heartbeat, one RequestVote and
// a pipeline of 4 AppendEntries, all waiting for their responses; their errors arrive on the
// returned channel (7 in all) as each returns.
func waitingRPCs(t *testing.T, a *Transport, target raft.ServerAddress) (<-chan error, int) {
	t.Helper()
	errs := make(chan error, 16)
	args := makeAppendRPC()
	heartbeat := raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{Addr: []byte(a.LocalAddr())}, Term: 10}
	go func() { errs <- a.AppendEntries("b", target, &args, new(raft.AppendEntriesResponse)) }()
	go func() { errs <- a.AppendEntries("b", target, &heartbeat, new(raft.AppendEntriesResponse)) }()
	go func() {
		errs <- a.RequestVote("b", target, &raft.RequestVoteRequest{Term: 10}, new(raft.RequestVoteResponse))
	}()
	pl, err := a.AppendEntriesPipeline("b", target)
	if err != nil {
		t.Fatalf("AppendEntriesPipeline: %v", err)
	}
	t.Cleanup(func() { _ = pl.Close() })
	var futures []raft.AppendFuture
	for i := 0; i < 4; i++ {
		f, err := pl.AppendEntries(&args, new(raft.AppendEntriesResponse))
		if err != nil {
			t.Fatalf("pipelined AppendEntries %d: %v", i, err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		f := f
		go func() { errs <- f.Error() }()
	}
	return errs, 3 + len(futures)
}

// checkFailFast waits for n errors: each must be ErrPeerFailed matching want (a flow error of
// the Go binding), and all must come before the RPC timeout. It returns the time the last
// one took after start.
func checkFailFast(t *testing.T, errs <-chan error, n int, start time.Time, want error) time.Duration {
	t.Helper()
	deadline := time.After(rpcTimeout - time.Second)
	var last time.Duration
	for i := 0; i < n; i++ {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrPeerFailed) || !errors.Is(err, want) {
				t.Fatalf("RPC %d: want an error matching %v and %v, got %v", i, ErrPeerFailed, want, err)
			}
			last = time.Since(start)
		case <-deadline:
			t.Fatalf("%d of %d RPCs still waiting: they did not fail before the %v RPC timeout", n-i, n, rpcTimeout)
		}
	}
	return last
}

func newTimeoutTransport(t *testing.T, sc sidecar, max int) *Transport {
	t.Helper()
	tr, err := NewTransport(Config{Socket: sc.socket, LocalIP: sc.ip, Port: port(), Timeout: rpcTimeout, MaxRPCsInFlight: max})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// holdingPeer is a TestHelperHoldingPeer child process.
type holdingPeer struct {
	cmd    *exec.Cmd
	lines  chan string
	killed bool
}

// startHoldingPeer runs a TestHelperHoldingPeer child on sidecar sc, port p (killed when the
// test ends) and waits until it listens.
func startHoldingPeer(t *testing.T, sc sidecar, p uint16) *holdingPeer {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHoldingPeer$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d", holderEnv, sc.socket, sc.ip, p))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holdingPeer{cmd: cmd, lines: make(chan string, 64)}
	t.Cleanup(func() {
		if !h.killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			h.lines <- s.Text()
		}
		close(h.lines)
	}()
	h.expect(t, "READY")
	return h
}

// expect waits (30 s) for the peer's next line, which must be what.
func (h *holdingPeer) expect(t *testing.T, what string) {
	t.Helper()
	select {
	case l, ok := <-h.lines:
		if !ok || l != what {
			t.Fatalf("holding peer: want %q, got %q (open %v)", what, l, ok)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("holding peer: no %q after 30 s", what)
	}
}

// holdRPCs starts waitingRPCs from a to the holding peer at sc, p and returns once every RPC
// reached the peer's raft (all wait for responses then).
func (h *holdingPeer) holdRPCs(t *testing.T, a *Transport, sc sidecar, p uint16) (<-chan error, int) {
	t.Helper()
	errs, n := waitingRPCs(t, a, raft.ServerAddress(fmt.Sprintf("%s:%d", sc.ip, p)))
	for i := 0; i < n; i++ {
		h.expect(t, "GOT")
	}
	return errs, n
}

// TestPendingRPCsFailWhenPeerKilled: a peer process SIGKILLed while AppendEntries, a
// heartbeat, a vote and pipelined AppendEntries wait for it: they all fail with ErrPeerFailed
// (the flow's end) long before the RPC timeout; then RPCs to a new peer at that address work.
func TestPendingRPCsFailWhenPeerKilled(t *testing.T) {
	sc := sidecars(t)
	a := newTimeoutTransport(t, sc[0], 10)
	p := port()
	h := startHoldingPeer(t, sc[1], p)
	errs, n := h.holdRPCs(t, a, sc[1], p)
	start := time.Now()
	if err := h.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	h.killed = true
	_ = h.cmd.Wait()
	took := checkFailFast(t, errs, n, start, ErrPeerFailed)
	t.Logf("TIME-TO-FAIL peer process SIGKILLed: %d RPCs failed, the last %v after the kill (RPC timeout %v)", n, took.Round(time.Microsecond), rpcTimeout)

	b := newTimeoutTransport(t, sc[1], 0)
	_ = b // a new peer on another port answers: the transport still works after the failure
	serveRPCs(t, b, func(rpc raft.RPC) (interface{}, error) {
		return &raft.RequestVoteResponse{Term: 11, Granted: true}, nil
	})
	var vote raft.RequestVoteResponse
	if err := a.RequestVote("b2", b.LocalAddr(), &raft.RequestVoteRequest{Term: 11}, &vote); err != nil || !vote.Granted {
		t.Fatalf("RequestVote to a live peer after the failure: %v %+v", err, vote)
	}
}

// startSidecar starts a sidecar of its own on ip (MACHNET_RAFT_SIDECAR_BIN, UDP ports from
// MACHNET_RAFT_UDP_BASE, set by ci/raft.sh), killed when the test ends; it returns the sidecar
// and its process.
func startSidecar(t *testing.T, ip string) (sidecar, *exec.Cmd) {
	t.Helper()
	bin, base := os.Getenv("MACHNET_RAFT_SIDECAR_BIN"), os.Getenv("MACHNET_RAFT_UDP_BASE")
	if bin == "" || base == "" {
		t.Skip("MACHNET_RAFT_SIDECAR_BIN / MACHNET_RAFT_UDP_BASE not set (ci/raft.sh sets them)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "machnet.sock")
	logf, err := os.Create(filepath.Join(dir, "machnet.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--local-ip", ip, "--control-socket", sock,
		"--allow-user", strconv.Itoa(os.Getuid()), "--udp-port-base", base,
		"--udp-port-count", "8", "--stats-interval", "0")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("sidecar %s log:\n%s", ip, out)
		}
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			return sidecar{sock, ip}, cmd
		}
		if i == 1000 {
			t.Fatalf("sidecar on %s did not start within 10 s", ip)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPendingRPCsFailWhenPeerSidecarKilled: the peer's whole sidecar is SIGKILLed while RPCs
// wait for it. Its host answers our next datagrams (keepalives at the latest) with ICMP port
// unreachable, which ends the flows as reset (PROTOCOL.md §8.4): the RPCs fail with
// ErrPeerFailed wrapping machnet.ErrFlowReset (without the ICMP, the flows would end later,
// timed out).
func TestPendingRPCsFailWhenPeerSidecarKilled(t *testing.T) {
	sc := sidecars(t)
	peer, sidecarProc := startSidecar(t, "127.0.0.4")
	a := newTimeoutTransport(t, sc[0], 10)
	p := port()
	h := startHoldingPeer(t, peer, p)
	errs, n := h.holdRPCs(t, a, peer, p)
	start := time.Now()
	if err := sidecarProc.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = sidecarProc.Wait()
	// Reset, not timed out: the ICMP ended the flows, not the protocol's timers.
	took := checkFailFast(t, errs, n, start, machnet.ErrFlowReset)
	t.Logf("TIME-TO-FAIL peer sidecar SIGKILLed: %d RPCs failed, the last %v after the kill (RPC timeout %v)", n, took.Round(time.Microsecond), rpcTimeout)
}

// TestPendingRPCsFailWhenPeerCloses: the peer's transport closes while RPCs wait for it: the
// responses raft already gave still arrive, every other RPC fails at once with ErrPeerFailed.
func TestPendingRPCsFailWhenPeerCloses(t *testing.T) {
	sc := sidecars(t)
	a := newTimeoutTransport(t, sc[0], 10)
	b := newTimeoutTransport(t, sc[1], 0)
	answered := make(chan error, 1)
	args := makeAppendRPC()
	go func() { answered <- a.AppendEntries("b", b.LocalAddr(), &args, new(raft.AppendEntriesResponse)) }()
	first := <-b.Consumer()
	errs, n := waitingRPCs(t, a, b.LocalAddr())
	var held []raft.RPC
	for i := 0; i < n; i++ {
		select {
		case rpc := <-b.Consumer():
			held = append(held, rpc)
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d RPCs reached the peer", i, n)
		}
	}
	resp := makeAppendRPCResponse()
	first.Respond(&resp, nil) // answered before the close: must still be delivered
	start := time.Now()
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-answered; err != nil {
		t.Fatalf("the RPC raft answered before the peer closed failed: %v", err)
	}
	took := checkFailFast(t, errs, n, start, ErrPeerFailed)
	t.Logf("TIME-TO-FAIL peer transport closed: %d RPCs failed, the last %v after Close began (RPC timeout %v)", n, took.Round(time.Microsecond), rpcTimeout)
}

// TestDisconnectAndCloseStreams: raft.WithPeers' Disconnect and DisconnectAll fail the RPCs
// waiting on the peer at once and bar new ones until Connect; CloseStreams fails waiting RPCs
// in both directions at once, and RPCs work again afterwards.
func TestDisconnectAndCloseStreams(t *testing.T) {
	sc := sidecars(t)
	a := newTimeoutTransport(t, sc[0], 0)
	b := newTimeoutTransport(t, sc[1], 0)
	var mu sync.Mutex
	hold := true
	var held []raft.RPC
	serve := func(tr *Transport) {
		go func() {
			for rpc := range tr.Consumer() {
				mu.Lock()
				if hold {
					held = append(held, rpc)
					mu.Unlock()
					continue
				}
				mu.Unlock()
				rpc.Respond(&raft.RequestVoteResponse{Term: 1, Granted: true}, nil)
			}
		}()
	}
	serve(a)
	serve(b)
	heldCount := func() int { mu.Lock(); defer mu.Unlock(); return len(held) }
	waitHeld := func(n int) {
		t.Helper()
		for end := time.Now().Add(30 * time.Second); heldCount() < n; time.Sleep(time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("only %d of %d RPCs reached their peer", heldCount(), n)
			}
		}
	}
	vote := func(from *Transport, to raft.ServerAddress) <-chan error {
		c := make(chan error, 1)
		go func() {
			c <- from.RequestVote("x", to, &raft.RequestVoteRequest{Term: 1}, new(raft.RequestVoteResponse))
		}()
		return c
	}
	within := func(c <-chan error, what string) error {
		t.Helper()
		select {
		case err := <-c:
			return err
		case <-time.After(rpcTimeout - time.Second):
			t.Fatalf("%s: still waiting near the RPC timeout", what)
		}
		return nil
	}

	// Disconnect: the waiting RPC fails at once; new ones fail until Connect.
	w := vote(a, b.LocalAddr())
	waitHeld(1)
	a.Disconnect(b.LocalAddr())
	if err := within(w, "Disconnect"); !errors.Is(err, ErrPeerDisconnected) {
		t.Fatalf("RPC waiting across Disconnect: want ErrPeerDisconnected, got %v", err)
	}
	if err := <-vote(a, b.LocalAddr()); !errors.Is(err, ErrPeerDisconnected) {
		t.Fatalf("RPC after Disconnect: want ErrPeerDisconnected, got %v", err)
	}
	mu.Lock()
	hold = false
	mu.Unlock()
	a.Connect(b.LocalAddr(), nil)
	if err := within(vote(a, b.LocalAddr()), "after Connect"); err != nil {
		t.Fatalf("RPC after Connect: %v", err)
	}

	// DisconnectAll bars every peer, also one never talked to, until Connect.
	a.DisconnectAll()
	if err := <-vote(a, b.LocalAddr()); !errors.Is(err, ErrPeerDisconnected) {
		t.Fatalf("RPC after DisconnectAll: want ErrPeerDisconnected, got %v", err)
	}
	if err := <-vote(a, "127.0.0.9:1"); !errors.Is(err, ErrPeerDisconnected) {
		t.Fatalf("RPC to a new peer after DisconnectAll: want ErrPeerDisconnected, got %v", err)
	}
	a.Connect(b.LocalAddr(), nil)
	if err := within(vote(a, b.LocalAddr()), "after DisconnectAll+Connect"); err != nil {
		t.Fatalf("RPC after DisconnectAll and Connect: %v", err)
	}

	// CloseStreams on a: its outgoing RPC waiting on b and b's incoming RPC waiting on a
	// both fail at once.
	mu.Lock()
	hold = true
	held = nil
	mu.Unlock()
	out, in := vote(a, b.LocalAddr()), vote(b, a.LocalAddr())
	waitHeld(2)
	start := time.Now()
	a.CloseStreams()
	if err := within(out, "CloseStreams (outgoing)"); !errors.Is(err, ErrStreamsClosed) {
		t.Fatalf("outgoing RPC across CloseStreams: want ErrStreamsClosed, got %v", err)
	}
	if err := within(in, "CloseStreams (incoming)"); !errors.Is(err, ErrPeerFailed) {
		t.Fatalf("incoming RPC across CloseStreams: want ErrPeerFailed, got %v", err)
	}
	t.Logf("TIME-TO-FAIL CloseStreams: both directions failed %v after the call", time.Since(start).Round(time.Microsecond))
	mu.Lock()
	hold = false
	mu.Unlock()
	if err := within(vote(a, b.LocalAddr()), "after CloseStreams"); err != nil {
		t.Fatalf("RPC after CloseStreams: %v", err)
	}
}
