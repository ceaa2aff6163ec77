package machnet

/*
#include "machnet.h"
*/
import "C"

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// livenessCheck bounds how long Recv waits in the netpoller without asking the library: a
// sidecar that died writes no eventfd, and the library only notices the hang-up when asked.
const livenessCheck = time.Second

// receiver makes Recv wait the way Go's own sockets do: the channel's eventfd
// (machnet_channel_fd, duplicated) sits in the runtime's netpoller, so a waiting goroutine
// holds no OS thread and is woken by the scheduler like one blocked on a TCP read (WaitNetpoll;
// recv_thread.go has the WaitInThread alternative and the measurements). A short wait inside
// the library before the netpoller was tried and was worse for both kinds of program: the
// eventfd, once in the netpoller, wakes it for every message the library consumes too.
type receiver struct {
	once sync.Once
	file *os.File        // the duplicated eventfd; nil if setup failed
	raw  syscall.RawConn // file's netpoller handle
	err  error           // why setup failed

	// One waiting Recv at a time is the poller: it waits in the netpoller with the file's read
	// deadline set for its own context. The others wait for the current turn to end (a
	// message for the poller, its deadline, or its cancellation), then try again, one of them
	// as the next poller. So each waiter honours its own ctx, and a lone waiter (the common
	// case) is woken by the netpoller directly.
	mu      sync.Mutex
	turn    chan struct{} // closed when the current poller's turn ends
	polling bool          // a poller is waiting
	set     time.Time     // the read deadline last set (zero: unknown); only the poller uses it
}

// join returns the current turn's channel and whether the caller became the poller.
func (r *receiver) join() (<-chan struct{}, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.turn == nil {
		r.turn = make(chan struct{})
	}
	poller := !r.polling
	r.polling = true
	return r.turn, poller
}

// endTurn: the poller stops waiting; the other waiters try again.
func (r *receiver) endTurn() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.polling = false
	if r.turn != nil {
		close(r.turn)
		r.turn = nil
	}
}

// conn sets up the netpoller handle on first use.
func (r *receiver) conn(c *Channel) (syscall.RawConn, error) {
	r.once.Do(func() {
		fd, err := C.machnet_channel_fd(c.ctx)
		if fd < 0 {
			r.err = fail("machnet_channel_fd", err)
			return
		}
		// Our own descriptor: closing it (Close, or the *os.File's finalizer) leaves the
		// library's alone. The eventfd is non-blocking, so os.NewFile puts it in the netpoller.
		dup, err := syscall.Dup(int(fd))
		if err != nil {
			r.err = newError("dup", err.(syscall.Errno), err.Error())
			return
		}
		syscall.CloseOnExec(dup)
		r.file = os.NewFile(uintptr(dup), "machnet-channel")
		if r.raw, err = r.file.SyscallConn(); err != nil {
			_ = r.file.Close()
			r.file, r.err = nil, err
		}
	})
	return r.raw, r.err
}

// close wakes waiters (they then find the channel closed) and releases the descriptor.
func (r *receiver) close() {
	r.once.Do(func() { r.err = ErrClosed }) // never set up: nothing to close, and no later setup
	if r.file != nil {
		_ = r.file.Close()
	}
}

// Recv waits for the next message and copies it into buf. It honours ctx's deadline and
// cancellation (returning ctx.Err()) without spinning and without holding an OS thread: the
// goroutine waits in Go's netpoller, woken by the sidecar through the channel's eventfd. A
// message larger than buf is not consumed: the error matches ErrMessageSize and its Needed
// field tells the size. Concurrent Recv calls on one channel each get their own message.
func (c *Channel) Recv(ctx context.Context, buf []byte) (int, Flow, error) {
	if err := ctx.Err(); err != nil {
		return 0, Flow{}, err
	}
	if WaitMode(atomic.LoadInt32(&c.mode)) == WaitInThread {
		return c.recvInThread(ctx, buf)
	}
	if n, f, err := c.recv(buf, 0); n > 0 || err != nil {
		return n, f, err
	}
	var n int
	var f Flow
	err := c.waitNetpoll(ctx, func() (bool, error) {
		var err error
		n, f, err = c.recv(buf, 0)
		return n > 0, err
	})
	if err != nil {
		return 0, Flow{}, err
	}
	return n, f, nil
}

// waitNetpoll calls attempt until it reports done or fails, waiting in the netpoller between
// calls; attempt must make the library arm the channel's eventfd when it finds nothing (as
// machnet_recv and machnet_recv_zc do). It returns attempt's error or ctx's.
func (c *Channel) waitNetpoll(ctx context.Context, attempt func() (bool, error)) error {
	raw, err := c.rx.conn(c)
	if err != nil {
		return err
	}
	for {
		turn, poller := c.rx.join()
		if !poller {
			// An attempt finding nothing arms the eventfd; a message arriving after it
			// wakes the poller, whose turn then ends: no wake-up is lost.
			if done, err := attempt(); done || err != nil {
				return err
			}
			select {
			case <-turn:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		done, err := c.poll(ctx, raw, attempt)
		c.rx.endTurn()
		if done {
			return err
		}
	}
}

// poll is one turn as the poller: it waits in the netpoller until attempt succeeded or
// failed (done), or until its wait ended without either (the liveness check: not done).
func (c *Channel) poll(ctx context.Context, raw syscall.RawConn, attempt func() (bool, error)) (done bool, err error) {
	if ctx.Done() != nil {
		// Cancellation moves the read deadline into the past, which wakes the wait. A late
		// call (after this turn) only makes a later poller re-check: see the deadline case.
		stop := afterCancel(ctx, func() { _ = c.rx.file.SetReadDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	if e := ctx.Err(); e != nil {
		return true, e
	}
	deadline, hasDeadline := ctx.Deadline()
	if e := c.rx.setDeadline(deadline, hasDeadline); e != nil {
		return true, ErrClosed
	}
	var got bool
	var rerr error
	// Read calls the function, and while it returns false waits until the eventfd fires.
	// An attempt finding nothing arms the eventfd first, so no wake-up is lost.
	werr := raw.Read(func(uintptr) bool {
		got, rerr = attempt()
		return got || rerr != nil
	})
	switch {
	case got || rerr != nil:
		return true, rerr
	case errors.Is(werr, os.ErrDeadlineExceeded):
		c.rx.set = time.Time{} // ours, the liveness check's or a stale cancellation's
		if e := ctx.Err(); e != nil {
			return true, e
		}
		if hasDeadline && !time.Now().Before(deadline) {
			return true, context.DeadlineExceeded
		}
		return false, nil // the liveness check: the next attempt reports a dead sidecar
	case werr != nil:
		return true, ErrClosed // the file was closed: Close ran
	}
	return false, nil
}

// setDeadline makes the wait end by the caller's deadline and at the next liveness check,
// touching the file's deadline (a runtime timer update) only when that changes something: in
// a steady stream of Recv calls it is set about once per livenessCheck. Only the poller calls it.
func (r *receiver) setDeadline(deadline time.Time, has bool) error {
	now := time.Now()
	want := r.set
	if want.IsZero() || !now.Before(want) {
		want = now.Add(livenessCheck)
	}
	if has && deadline.Before(want) {
		want = deadline
	}
	if want.Equal(r.set) {
		return nil
	}
	r.set = want
	return r.file.SetReadDeadline(want)
}
