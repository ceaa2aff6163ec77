package machnet

/*
#include <pthread.h>
#include "machnet.h"

// Each helper also tells which OS thread it ran on (zc_*: self) or whether it ran on the
// thread that took the loan or view (same), in the same cgo call: see pinning in zerocopy.go.
static int zc_loan(void *ctx, MachnetFlow_t flow, size_t len, void **buf, int wait,
                   pthread_t *self) {
	*self = pthread_self();
	return wait ? machnet_loan(ctx, flow, len, buf) : machnet_try_loan(ctx, flow, len, buf);
}

static int zc_commit(void *ctx, size_t len, pthread_t owner, int *same) {
	*same = pthread_equal(pthread_self(), owner);
	return machnet_commit(ctx, len);
}

static int zc_loan_cancel(void *ctx, pthread_t owner, int *same) {
	*same = pthread_equal(pthread_self(), owner);
	return machnet_loan_cancel(ctx);
}

static int zc_recv(void *ctx, const void **data, size_t *len, MachnetFlow_t *flow,
                   int timeout_ms, int wait, pthread_t *self) {
	*self = pthread_self();
	return wait ? machnet_recv_zc_timeout(ctx, data, len, flow, timeout_ms)
	            : machnet_recv_zc(ctx, data, len, flow);
}

static int zc_release(void *ctx, pthread_t owner, int *same) {
	*same = pthread_equal(pthread_self(), owner);
	return machnet_release(ctx);
}
*/
import "C"

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Zero-copy send and receive (machnet_loan / machnet_commit, machnet_recv_zc /
// machnet_release): the bytes live in the channel's shared memory, which the slices of
// Loan.Bytes and View.Bytes point into.
//
// Pinning. libmachnet ties an outstanding loan or borrowed message to the OS thread that took
// it: a send, loan or zero-copy receive from that thread fails with EBUSY (it would wait for
// itself), one from another thread waits. Goroutines move between OS threads, so the binding
// wires the goroutine that takes a loan or view to its OS thread (runtime.LockOSThread) until
// the loan or view ends: the holder's own calls get the clear EBUSY error instead of waiting
// for themselves, and no other goroutine can run on that thread and be taken for the holder.
// Ending it from the holding goroutine unwires it (the helpers above compare threads in the
// same cgo call); ending it from another goroutine works, but the holder stays wired until it
// exits.

// Loan is room for one message in the channel's shared memory, taken with Channel.Loan. Write
// the message into Bytes(), then Commit the bytes used, or Cancel. Only one loan is out per
// channel at a time: while it is, Send and Loan from other goroutines wait for it to end, and
// from the goroutine holding it fail with an EBUSY *Error (ERR_MACHNET_WOULD_BLOCK); Connect
// fails. Forgetting a loan blocks the channel's sends like a lock never unlocked: take it with
// `defer l.Cancel()` (a no-op error after Commit).
//
// The slice from Bytes is valid until Commit, Cancel or the channel's Close, whichever comes
// first: writing through it afterwards corrupts other messages, or crashes after Close (the
// memory is unmapped). Commit and Cancel are safe to call from any goroutine, once.
type Loan struct {
	c     *Channel
	flow  Flow
	buf   []byte
	owner C.pthread_t
	over  atomic.Bool
}

// Loan takes room for a message of up to n bytes (1 to MaxMessageLen) on f directly in the
// channel's shared memory, waiting while the sidecar applies back-pressure (like Send) and
// while another goroutine's loan is out. The initial contents of the room are unspecified.
func (c *Channel) Loan(f Flow, n int) (*Loan, error) {
	return c.loan(f, n, true)
}

// TryLoan is Loan without waiting: an error matching syscall.EAGAIN if the ring lacks room
// now, syscall.EBUSY if another loan is out.
func (c *Channel) TryLoan(f Flow, n int) (*Loan, error) {
	return c.loan(f, n, false)
}

func (c *Channel) loan(f Flow, n int, wait bool) (*Loan, error) {
	if n <= 0 {
		return nil, newError("machnet_loan", syscall.EINVAL, "a loan has at least 1 byte")
	}
	var p unsafe.Pointer
	var self C.pthread_t
	w := C.int(0)
	if wait {
		w = 1
	}
	runtime.LockOSThread() // kept on success: pinning (see above)
	r, err := C.zc_loan(c.ctx, f.c(), C.size_t(n), &p, w, &self)
	if r != 0 {
		e := fail("machnet_loan", err)
		runtime.UnlockOSThread()
		return nil, e
	}
	return &Loan{c: c, flow: f, buf: unsafe.Slice((*byte)(p), n), owner: self}, nil
}

// Bytes is the loaned room (len = the length asked for), or nil once the loan is over. See
// Loan for how long the slice stays valid.
func (l *Loan) Bytes() []byte {
	if l.over.Load() {
		return nil
	}
	return l.buf
}

// Flow is the flow the message goes out on.
func (l *Loan) Flow() Flow { return l.flow }

// errOver: Commit or Cancel of a loan already ended (the binding's own check: the C ABI
// would end whichever loan is out on the channel now).
func errOver(op, what string) *Error {
	return newError(op, syscall.EINVAL, what+" is already over")
}

// Commit sends the first n bytes of the loan (1 ≤ n ≤ len(Bytes())) as one message; the rest
// of the room is given back. The loan is over whatever the result: on an error nothing is
// sent (n out of range is an EINVAL error). A nil error promises what a returned Send does.
func (l *Loan) Commit(n int) error {
	if l.over.Swap(true) {
		return errOver("machnet_commit", "the loan")
	}
	used := C.size_t(0) // a negative n must not wrap: 0 is refused (EINVAL) like too large
	if n > 0 {
		used = C.size_t(n)
	}
	return endPinned(func(same *C.int) (C.int, error) {
		r, err := C.zc_commit(l.c.ctx, used, l.owner, same)
		return r, err
	}, "machnet_commit")
}

// Cancel ends the loan without sending anything (an EINVAL error if it is already over).
func (l *Loan) Cancel() error {
	if l.over.Swap(true) {
		return errOver("machnet_loan_cancel", "the loan")
	}
	return endPinned(func(same *C.int) (C.int, error) {
		r, err := C.zc_loan_cancel(l.c.ctx, l.owner, same)
		return r, err
	}, "machnet_loan_cancel")
}

// endPinned runs call (which reports whether it ran on the owner's thread) on a locked thread;
// on the owner's thread it also undoes the owner's pin.
func endPinned(call func(same *C.int) (C.int, error), op string) error {
	var same C.int
	runtime.LockOSThread()
	r, err := call(&same)
	var e error
	if r != 0 {
		e = fail(op, err)
	}
	runtime.UnlockOSThread()
	if same != 0 {
		runtime.UnlockOSThread() // the pin taken with the loan or view
	}
	return e
}

// View is a received message borrowed in place in the channel's shared memory (RecvZC): its
// ring space is not reused until Release. Only one view is out per channel at a time: while it
// is, copying receives (Recv, TryRecv) go on and return the messages after it; RecvZC from
// another goroutine waits for the release, and from the goroutine holding it fails with an
// EBUSY *Error (ERR_MACHNET_WOULD_BLOCK); TryRecvZC fails with EBUSY.
//
// The slice from Bytes is valid until Release or the channel's Close, whichever comes first;
// do not write through it or keep it: copy what must outlive the view. Release is safe to
// call from any goroutine; a second Release is an EINVAL error (no other effect).
type View struct {
	c     *Channel
	data  []byte
	owner C.pthread_t
	over  atomic.Bool
}

// Bytes is the message, or nil once the view is released. See View for how long the slice
// stays valid.
func (v *View) Bytes() []byte {
	if v.over.Load() {
		return nil
	}
	return v.data
}

// Len is the message's length.
func (v *View) Len() int { return len(v.data) }

// Release gives the message's space back to the sidecar.
func (v *View) Release() error {
	if v.over.Swap(true) {
		return errOver("machnet_release", "the view")
	}
	err := endPinned(func(same *C.int) (C.int, error) {
		r, err := C.zc_release(v.c.ctx, v.owner, same)
		return r, err
	}, "machnet_release")
	v.c.zc.released(v)
	return err
}

// views is the channel's borrowed message as the binding sees it, so a netpoll RecvZC can wait
// for another goroutine's release (the library wakes only waiters inside it).
type views struct {
	mu   sync.Mutex
	out  *View
	gone chan struct{} // closed when out is released; made by the first waiter
}

func (z *views) borrowed(v *View) {
	z.mu.Lock()
	z.out = v
	z.mu.Unlock()
}

func (z *views) released(v *View) {
	z.mu.Lock()
	if z.out == v {
		z.out = nil
		if z.gone != nil {
			close(z.gone)
			z.gone = nil
		}
	}
	z.mu.Unlock()
}

// waitFor returns a channel closed once the view out now is released (nil: none is out), and
// whether the caller's OS thread (self) is the holder's.
func (z *views) waitFor(self C.pthread_t) (<-chan struct{}, bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.out == nil {
		return nil, false
	}
	if z.out.owner == self { // pthread_equal on Linux

		return nil, true
	}
	if z.gone == nil {
		z.gone = make(chan struct{})
	}
	return z.gone, false
}

// errBusyElsewhere: machnet_recv_zc found another goroutine's view out (RecvZC then waits).
type errBusyElsewhere struct{ self C.pthread_t }

func (errBusyElsewhere) Error() string { return "a borrowed message is out" }

// recvZC is one machnet_recv_zc (wait false) or machnet_recv_zc_timeout: the view, or nil if
// none came; errBusyElsewhere if another goroutine's view is out (machnet_recv_zc_timeout
// reports that once its timeout passed).
func (c *Channel) recvZC(wait bool, timeoutMs C.int) (Flow, *View, error) {
	var d unsafe.Pointer
	var n C.size_t
	var cf C.MachnetFlow_t
	var self C.pthread_t
	w := C.int(0)
	if wait {
		w = 1
	}
	runtime.LockOSThread() // kept when a view is borrowed: pinning (see above)
	r, err := C.zc_recv(c.ctx, &d, &n, &cf, timeoutMs, w, &self)
	if r == 1 {
		v := &View{c: c, data: unsafe.Slice((*byte)(d), int(n)), owner: self}
		c.zc.borrowed(v)
		return flowOf(cf), v, nil
	}
	var e error
	if r < 0 {
		e = fail("machnet_recv_zc", err)
	}
	runtime.UnlockOSThread()
	if e != nil && errors.Is(e, syscall.EBUSY) {
		if _, mine := c.zc.waitFor(self); !mine {
			return Flow{}, nil, errBusyElsewhere{self}
		}
	}
	return Flow{}, nil, e
}

// TryRecvZC borrows the next waiting message without copying it and without waiting; a nil
// View means none was waiting. An EBUSY error if a view is out already (this one does not
// wait). Release the view when done with it.
func (c *Channel) TryRecvZC() (Flow, *View, error) {
	f, v, err := c.recvZC(false, 0)
	var busy errBusyElsewhere
	if errors.As(err, &busy) {
		return Flow{}, nil, newError("machnet_recv_zc", syscall.EBUSY, "another goroutine's borrowed message is out (release it first)")
	}
	return f, v, err
}

// RecvZC waits for the next message and borrows it in place (see View); Release it when done.
// It waits like Recv (the channel's WaitMode, ctx's deadline and cancellation), and while
// another goroutine's view is out, for its release. Flow events met on the way are queued for
// NextEvent as Recv queues them.
func (c *Channel) RecvZC(ctx context.Context) (Flow, *View, error) {
	if err := ctx.Err(); err != nil {
		return Flow{}, nil, err
	}
	if WaitMode(atomic.LoadInt32(&c.mode)) == WaitInThread {
		return c.recvZCInThread(ctx)
	}
	for {
		var f Flow
		var v *View
		attempt := func() (bool, error) {
			var err error
			f, v, err = c.recvZC(false, 0)
			return v != nil, err
		}
		got, err := attempt()
		if !got && err == nil {
			err = c.waitNetpoll(ctx, attempt)
		}
		var busy errBusyElsewhere
		if !errors.As(err, &busy) {
			return f, v, err
		}
		// Another goroutine's view is out: wait for its release, then try again.
		gone, _ := c.zc.waitFor(busy.self)
		if gone == nil {
			continue
		}
		select {
		case <-gone:
		case <-ctx.Done():
			return Flow{}, nil, ctx.Err()
		}
	}
}

// recvZCInThread is RecvZC in WaitInThread mode: machnet_recv_zc_timeout (which also waits for
// another thread's release) until ctx's deadline, interrupted on cancellation.
func (c *Channel) recvZCInThread(ctx context.Context) (Flow, *View, error) {
	defer c.interruptOnCancel(ctx)()
	for {
		timeout, err := timeoutMs(ctx)
		if err != nil {
			return Flow{}, nil, err
		}
		f, v, err := c.recvZC(true, timeout)
		if v != nil {
			return f, v, nil
		}
		var busy errBusyElsewhere
		if err == nil || errors.Is(err, syscall.EINTR) || errors.As(err, &busy) {
			if e := ctx.Err(); e != nil {
				return Flow{}, nil, e
			}
			continue
		}
		return Flow{}, nil, err
	}
}
