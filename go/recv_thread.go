package machnet

/*
#include "machnet.h"
*/
import "C"

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"
)

// WaitMode says how Recv waits for a message (Channel.SetWaitMode).
type WaitMode int32

const (
	// WaitNetpoll, the default: the goroutine waits in Go's netpoller and holds no OS thread
	// while it waits. Best for programs with many goroutines or channels (servers, the Raft
	// transport: its RPC round trip p50 fell by about 30 % against WaitInThread,
	// PERFORMANCE.md §10).
	WaitNetpoll WaitMode = iota
	// WaitInThread: Recv sleeps inside the library on its OS thread (ppoll on the channel's
	// eventfd), as a blocking socket read in C would. The wake-up skips the Go scheduler's
	// netpoller: measured about 20-30 µs less per echo round trip on 2 vCPUs for a goroutine
	// that does nothing else (PERFORMANCE.md §8), at the cost of one OS thread per waiting Recv.
	// A cancellation is noticed within 5 ms.
	WaitInThread
)

// SetWaitMode chooses how later Recv calls on this channel wait.
func (c *Channel) SetWaitMode(m WaitMode) {
	atomic.StoreInt32(&c.mode, int32(m))
}

// recvInThread is Recv in WaitInThread mode: machnet_recv_timeout until ctx's deadline; a
// cancellation interrupts it (machnet_interrupt) until it has returned, since the interrupt
// only reaches a call that is already waiting.
func (c *Channel) recvInThread(ctx context.Context, buf []byte) (int, Flow, error) {
	defer c.interruptOnCancel(ctx)()
	for {
		timeout, err := timeoutMs(ctx)
		if err != nil {
			return 0, Flow{}, err
		}
		n, f, err := c.recv(buf, timeout)
		if n > 0 {
			return n, f, nil
		}
		if err == nil || errors.Is(err, syscall.EINTR) {
			// Timed out or interrupted: ours if ctx is done, else go on.
			if e := ctx.Err(); e != nil {
				return 0, Flow{}, e
			}
			continue
		}
		return 0, Flow{}, err
	}
}
