package machnet

/*
#include "machnet.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"time"
)

// EventKind says what happened to a flow (FlowEvent).
type EventKind uint32

// The kinds of flow events (machnet.h's MACHNET_EVENT_ constants).
const (
	// EventPeerClosed: the peer closed the flow; no further message will arrive on it. This
	// side is closed too (Send fails with ErrFlowClosed); an EventClosed follows.
	EventPeerClosed EventKind = C.MACHNET_EVENT_PEER_CLOSED
	// EventReset: the peer reset the flow (it aborted or went away): the flow is gone.
	EventReset EventKind = C.MACHNET_EVENT_RESET
	// EventTimedOut: the peer stopped answering: the flow is gone.
	EventTimedOut EventKind = C.MACHNET_EVENT_TIMED_OUT
	// EventRefused: the peer refused the flow: it is gone.
	EventRefused EventKind = C.MACHNET_EVENT_REFUSED
	// EventClosed: the flow ended (Errno 0: gracefully, both sides closed; else why).
	EventClosed EventKind = C.MACHNET_EVENT_CLOSED
	// EventRequestFailed: the sidecar could not carry out a request on the flow (a Send that
	// raced with the flow's end): that message was not sent.
	EventRequestFailed EventKind = C.MACHNET_EVENT_REQUEST_FAILED
	// EventAccepted: a listener of the channel accepted the flow (the peer connected), before
	// any message of it. Only Channel.TryRecvAny reports it.
	EventAccepted EventKind = C.MACHNET_EVENT_ACCEPTED
	// EventMessage: not an event: TryRecvAny received a message on the flow.
	EventMessage EventKind = C.MACHNET_EVENT_MESSAGE
)

func (k EventKind) String() string {
	switch k {
	case EventPeerClosed:
		return "peer_closed"
	case EventReset:
		return "reset"
	case EventTimedOut:
		return "timed_out"
	case EventRefused:
		return "refused"
	case EventClosed:
		return "closed"
	case EventRequestFailed:
		return "request_failed"
	case EventAccepted:
		return "accepted"
	case EventMessage:
		return "message"
	}
	return fmt.Sprintf("EventKind(%d)", uint32(k))
}

// Sentinels a *FlowError matches with errors.Is (besides ErrRefused and ErrFlowClosed).
var (
	// ErrPeerClosed: the peer closed the flow (EventPeerClosed, or a graceful EventClosed).
	ErrPeerClosed = errors.New("machnet: flow closed by the peer")
	// ErrFlowReset: the flow was reset (EventReset, an event with ECONNRESET, or an *Error with
	// code ERR_MACHNET_FLOW_RESET, e.g. a Connect the peer reset).
	ErrFlowReset = errors.New("machnet: flow reset")
	// ErrFlowTimedOut: the peer stopped answering (EventTimedOut).
	ErrFlowTimedOut = errors.New("machnet: flow timed out")
)

// FlowEvent is something that happened to one of a channel's flows (Channel.NextEvent).
type FlowEvent struct {
	Flow  Flow          // oriented as a received message's: Src = the peer
	Kind  EventKind     // what happened
	Errno syscall.Errno // the reason as an errno value (0: a graceful end, or EventPeerClosed)
}

func (e FlowEvent) String() string {
	if e.Errno == 0 {
		return fmt.Sprintf("%s: %s", e.Flow, e.Kind)
	}
	return fmt.Sprintf("%s: %s (%s)", e.Flow, e.Kind, e.Errno)
}

// Err returns the event as an error naming the flow (a *FlowError).
func (e FlowEvent) Err() error { return &FlowError{e} }

// FlowError is a FlowEvent as an error: it matches ErrPeerClosed, ErrFlowReset,
// ErrFlowTimedOut, ErrRefused and ErrFlowClosed (every event means the flow is or will soon be
// unusable) with errors.Is, and its Errno through errors.Unwrap.
type FlowError struct {
	FlowEvent
}

func (e *FlowError) Error() string { return "machnet: flow " + e.FlowEvent.String() }

// Unwrap returns the errno (nil for a graceful end).
func (e *FlowError) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// Is matches the package's sentinel errors.
func (e *FlowError) Is(target error) bool {
	switch target {
	case ErrFlowClosed:
		return true
	case ErrPeerClosed:
		return e.Kind == EventPeerClosed || (e.Kind == EventClosed && e.Errno == 0)
	case ErrFlowReset:
		return e.Kind == EventReset || e.Errno == syscall.ECONNRESET
	case ErrFlowTimedOut:
		return e.Kind == EventTimedOut
	case ErrRefused:
		return e.Kind == EventRefused
	}
	return false
}

// TryNextEvent returns the channel's next flow event without waiting (ok false: none). Recv and
// TryRecv keep the events they come across, in order, for it (up to 1024 per channel by
// default: SetEventLimit; more are counted by EventsDropped, not kept); each flow that ends
// yields one terminal event after its last message. A program that never asks loses nothing:
// Recv behaves as it always did.
func (c *Channel) TryNextEvent() (FlowEvent, bool, error) {
	return c.nextEvent(0)
}

// NextEvent waits for the channel's next flow event (see TryNextEvent), honouring ctx's
// deadline and cancellation without spinning. It waits inside the library on its OS thread
// (as Recv in WaitInThread mode), alongside Recv calls in other goroutines; a cancellation is
// noticed within 5 ms. Typical use: one goroutine per channel that watches its flows.
func (c *Channel) NextEvent(ctx context.Context) (FlowEvent, error) {
	if err := ctx.Err(); err != nil {
		return FlowEvent{}, err
	}
	defer c.interruptOnCancel(ctx)()
	for {
		timeout, err := timeoutMs(ctx)
		if err != nil {
			return FlowEvent{}, err
		}
		ev, ok, err := c.nextEvent(timeout)
		if ok {
			return ev, nil
		}
		if err == nil || errors.Is(err, syscall.EINTR) {
			// Timed out or interrupted: ours if ctx is done, else go on.
			if e := ctx.Err(); e != nil {
				return FlowEvent{}, e
			}
			continue
		}
		return FlowEvent{}, err
	}
}

func (c *Channel) nextEvent(timeoutMs C.int) (FlowEvent, bool, error) {
	var ev C.MachnetFlowEvent_t
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := C.machnet_next_event_timeout(c.ctx, &ev, timeoutMs)
	if r < 0 {
		return FlowEvent{}, false, fail("machnet_next_event", err)
	}
	if r == 0 {
		return FlowEvent{}, false, nil
	}
	return FlowEvent{Flow: flowOf(ev.flow), Kind: EventKind(ev.kind), Errno: syscall.Errno(ev.err)}, true, nil
}

// SetEventLimit sets how many flow events the channel keeps for NextEvent (default 1024; 0
// keeps none). Events beyond it are dropped and counted (EventsDropped).
func (c *Channel) SetEventLimit(limit int) error {
	if limit < 0 {
		return newError("machnet_set_event_limit", syscall.EINVAL, "negative limit")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if r, err := C.machnet_set_event_limit(c.ctx, C.size_t(limit)); r != 0 {
		return fail("machnet_set_event_limit", err)
	}
	return nil
}

// EventsDropped tells how many flow events the channel dropped because its event queue was full.
func (c *Channel) EventsDropped() (uint64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n, err := C.machnet_events_dropped(c.ctx)
	if n < 0 {
		return 0, fail("machnet_events_dropped", err)
	}
	return uint64(n), nil
}

// timeoutMs is ctx's time left for a blocking library call, in milliseconds (-1: no deadline).
func timeoutMs(ctx context.Context) (C.int, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		return -1, nil
	}
	left := time.Until(dl)
	if left <= 0 {
		return 0, context.DeadlineExceeded
	}
	if ms := (left + time.Millisecond - 1) / time.Millisecond; ms < 1<<30 {
		return C.int(ms), nil
	}
	return -1, nil
}

// interruptOnCancel makes a cancellation of ctx interrupt the channel's blocked library calls
// (machnet_interrupt) until the returned function is called, since an interrupt only reaches a
// call that is already waiting. Callers retry on EINTR unless their own ctx is done.
func (c *Channel) interruptOnCancel(ctx context.Context) (done func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	returned := make(chan struct{})
	stop := afterCancel(ctx, func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			C.machnet_interrupt(c.ctx)
			select {
			case <-returned:
				return
			case <-t.C:
			}
		}
	})
	return func() {
		close(returned)
		stop()
	}
}
