package machnet

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"
)

// eventPair: a server channel on the peer sidecar (through its own Sidecar handle) listening on
// port, and a client channel on this process's sidecar with one flow to it, which carried a
// "ping" (so the server's view of the flow, sf, is known).
func eventPair(t *testing.T, port uint16) (peer *Sidecar, srv, c *Channel, f, sf Flow) {
	t.Helper()
	peer, err := Open(os.Getenv("MACHNET_TEST_PEER_SOCK"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = peer.Close() })
	if srv, err = peer.Attach(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.ListenContext(ctx, peerIP, port); err != nil {
		t.Fatal(err)
	}
	if c, err = Attach(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if f, err = c.Connect(ctx, "0.0.0.0", peerIP, port); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(f, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if _, sf, err = srv.Recv(ctx, buf); err != nil {
		t.Fatal(err)
	}
	return peer, srv, c, f, sf
}

// sameFlow: an event's flow (Src = the peer) names the connected flow f (Src = us).
func sameFlow(ev, f Flow) bool {
	return ev.Src() == f.Dst() && ev.Dst() == f.Src()
}

func TestNextEventReportsAReset(t *testing.T) {
	_, srv, c, f, _ := eventPair(t, 7500)
	if _, ok, err := c.TryNextEvent(); ok || err != nil {
		t.Fatalf("an event before anything happened: %v %v", ok, err)
	}
	if err := srv.Abort(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, err := c.NextEvent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Kind != EventReset || ev.Errno != syscall.ECONNRESET || !sameFlow(ev.Flow, f) {
		t.Fatalf("event %v, want a reset of %v", ev, f)
	}
	err = ev.Err()
	var fe *FlowError
	if !errors.As(err, &fe) || fe.Flow != ev.Flow || !errors.Is(err, ErrFlowReset) ||
		!errors.Is(err, ErrFlowClosed) || !errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, ErrPeerClosed) {
		t.Fatalf("FlowError matching: %v", err)
	}
}

// Recv in another goroutine (each wait mode) takes the event off the ring; NextEvent gets it.
func TestNextEventWhileRecvWaits(t *testing.T) { eachWaitMode(t, nextEventWhileRecvWaits) }

func nextEventWhileRecvWaits(t *testing.T, mode WaitMode) {
	port := uint16(7501)
	if mode == WaitInThread {
		port = 7502
	}
	_, srv, c, f, sf := eventPair(t, port)
	c.SetWaitMode(mode)
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 16)
		n, _, err := c.Recv(context.Background(), buf)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(buf[:n])
	}()
	if err := srv.Send(sf, []byte("last")); err != nil {
		t.Fatal(err)
	}
	if m := <-got; m != "last" {
		t.Fatalf("Recv: %q", m)
	}
	recvErr := make(chan error, 1)
	go func() {
		_, _, err := c.Recv(context.Background(), make([]byte, 16))
		recvErr <- err
	}()
	if err := srv.Close(); err != nil { // graceful: peer closed, then closed
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, want := range []EventKind{EventPeerClosed, EventClosed} {
		ev, err := c.NextEvent(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind != want || ev.Errno != 0 || !sameFlow(ev.Flow, f) {
			t.Fatalf("event %v, want %v", ev, want)
		}
		if !errors.Is(ev.Err(), ErrPeerClosed) || errors.Is(ev.Err(), ErrFlowReset) {
			t.Fatalf("%v should match ErrPeerClosed only", ev.Err())
		}
	}
	select {
	case err := <-recvErr:
		t.Fatalf("the blocked Recv returned on an event: %v", err)
	default:
	}
	_ = c.Close()
	if err := <-recvErr; !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv after Close: %v", err)
	}
}

func TestNextEventHonoursCancellationAndDeadline(t *testing.T) {
	c, err := Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := c.NextEvent(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline: %v", err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := c.NextEvent(ctx2); done <- err }()
	cancel2()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancellation did not end NextEvent")
	}
}

func TestEventLimit(t *testing.T) {
	_, srv, c, _, _ := eventPair(t, 7503)
	if err := c.SetEventLimit(-1); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("negative limit: %v", err)
	}
	if err := c.SetEventLimit(0); err != nil {
		t.Fatal(err)
	}
	if err := srv.Abort(); err != nil {
		t.Fatal(err)
	}
	// The reset is dropped (limit 0) and counted.
	for i := 0; i < 400; i++ {
		if n, err := c.EventsDropped(); err != nil || n > 0 {
			if n != 1 {
				t.Fatalf("dropped %d, %v", n, err)
			}
			if _, ok, err := c.TryNextEvent(); ok || err != nil {
				t.Fatalf("an event was kept: %v %v", ok, err)
			}
			return
		}
		if _, _, err := c.recv(make([]byte, 16), 25); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("the reset never arrived")
}

// Two sidecars in one process through Open, without Init's process-wide attachment.
func TestTwoSidecarsInOneProcess(t *testing.T) {
	a, err := Open(os.Getenv("MACHNET_TEST_PEER_SOCK"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(os.Getenv("MACHNET_TEST_SOCK"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := a.Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := b.Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := Open("/nonexistent/machnet.sock"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("Open of a missing socket: %v", err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.ListenContext(cancelled, "0.0.0.0", 7504); !errors.Is(err, context.Canceled) {
		t.Fatalf("ListenContext with a cancelled ctx: %v", err)
	}
	if err := srv.Listen("0.0.0.0", 7504); err != nil {
		t.Fatal(err)
	}
	ctx, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	f, err := c.Connect(ctx, "0.0.0.0", peerIP, 7504)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil { // channels stay usable
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Attach(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Attach on a closed Sidecar: %v", err)
	}
	if err := c.Send(f, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, sf, err := srv.Recv(ctx, buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("server got %q, %v", buf[:n], err)
	}
	if err := srv.Send(sf, []byte("back")); err != nil {
		t.Fatal(err)
	}
	if n, _, err = c.Recv(ctx, buf); err != nil || string(buf[:n]) != "back" {
		t.Fatalf("client got %q, %v", buf[:n], err)
	}
}
