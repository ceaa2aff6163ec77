package machnet

import (
	"context"
	"errors"
	"testing"
	"time"
)

// RecvAny (each wait mode) waits for a message, then for the flow's reset, in order; a
// deadline ends the wait with ctx's error.
func TestRecvAnyWaitsForMessagesAndEvents(t *testing.T) { eachWaitMode(t, recvAnyWaits) }

func recvAnyWaits(t *testing.T, mode WaitMode) {
	port := uint16(7560)
	if mode == WaitInThread {
		port = 7561
	}
	_, srv, c, f, sf := eventPair(t, port)
	c.SetWaitMode(mode)
	type result struct {
		data string
		ev   FlowEvent
		err  error
	}
	recv := func() <-chan result {
		out := make(chan result, 1)
		go func() {
			buf := make([]byte, 16)
			n, ev, err := c.RecvAny(context.Background(), buf)
			out <- result{string(buf[:n]), ev, err}
		}()
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := c.RecvAny(ctx, make([]byte, 16)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RecvAny with nothing to receive: %v, want the deadline", err)
	}
	got := recv()
	if err := srv.Send(sf, []byte("last")); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.err != nil || r.ev.Kind != EventMessage || r.data != "last" || !sameFlow(r.ev.Flow, f) {
		t.Fatalf("RecvAny: %+v, want the message", r)
	}
	got = recv()
	if err := srv.Abort(); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.err != nil || r.ev.Kind != EventReset || !sameFlow(r.ev.Flow, f) || !errors.Is(r.ev.Err(), ErrFlowReset) {
		t.Fatalf("RecvAny: %+v, want the reset", r)
	}
}
