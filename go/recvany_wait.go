package machnet

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"
)

// RecvAny waits for the channel's next message or flow event (see TryRecvAny, whose results it
// returns) and honours ctx's deadline and cancellation. It waits as Recv does (SetWaitMode):
// by default in Go's netpoller, holding no OS thread. It is the blocking receive of a program
// that must notice a flow's end while it waits for messages (a request/response client failing
// its outstanding requests the moment the peer resets or closes the flow); do not mix it with
// Recv on one channel.
func (c *Channel) RecvAny(ctx context.Context, buf []byte) (n int, ev FlowEvent, err error) {
	if err := ctx.Err(); err != nil {
		return 0, FlowEvent{}, err
	}
	var ok bool
	if WaitMode(atomic.LoadInt32(&c.mode)) == WaitInThread {
		defer c.interruptOnCancel(ctx)()
		for {
			timeout, err := timeoutMs(ctx)
			if err != nil {
				return 0, FlowEvent{}, err
			}
			n, ev, ok, err = c.recvAny(buf, timeout)
			if ok {
				return n, ev, nil
			}
			if err == nil || errors.Is(err, syscall.EINTR) {
				if e := ctx.Err(); e != nil {
					return 0, FlowEvent{}, e
				}
				continue
			}
			return 0, FlowEvent{}, err
		}
	}
	if n, ev, ok, err = c.recvAny(buf, 0); ok || err != nil {
		return n, ev, err
	}
	// recvAny(buf, 0) finding nothing arms the channel's eventfd, as Recv's attempts do.
	err = c.waitNetpoll(ctx, func() (bool, error) {
		var e error
		n, ev, ok, e = c.recvAny(buf, 0)
		return ok, e
	})
	if err != nil {
		return 0, FlowEvent{}, err
	}
	return n, ev, nil
}
