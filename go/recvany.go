package machnet

/*
#include "machnet.h"
*/
import "C"

import (
	"runtime"
	"syscall"
	"unsafe"
)

// TryRecvAny returns the channel's next message or flow event, whichever the sidecar delivered
// first, without waiting (ok false: nothing is there; the channel's eventfd is then armed, as
// after TryRecv). A message is copied into buf: ev.Kind is EventMessage and n its length. An
// event (accepts included: EventAccepted comes before a flow's first message; EventPeerClosed
// after its last) leaves n 0. A message larger than buf is not lost: the error matches
// ErrMessageSize, its Needed field tells the size, and the message stays first in line for the
// next TryRecvAny.
//
// Unlike Recv, it closes nothing by itself: a flow whose peer closed stays open for sending
// until CloseFlow or AbortFlow (a half-close). It is the receive of a stream adapter that
// demultiplexes a channel's flows itself (netconn.go); do not mix it with Recv on one channel.
func (c *Channel) TryRecvAny(buf []byte) (n int, ev FlowEvent, ok bool, err error) {
	return c.recvAny(buf, 0)
}

// recvAny is TryRecvAny waiting up to timeoutMs in the library (on this OS thread; -1: no limit).
func (c *Channel) recvAny(buf []byte, timeoutMs C.int) (n int, ev FlowEvent, ok bool, err error) {
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	var cev C.MachnetFlowEvent_t
	var size C.size_t
	runtime.LockOSThread()
	r, cerr := C.machnet_recv_any(c.ctx, p, C.size_t(len(buf)), &size, &cev, timeoutMs)
	var e *Error
	if r < 0 {
		e = fail("machnet_recv_any", cerr)
	}
	runtime.UnlockOSThread()
	runtime.KeepAlive(buf)
	if e != nil {
		if e.Errno == syscall.EMSGSIZE {
			e.Needed = int(size)
		}
		return 0, FlowEvent{}, false, e
	}
	if r == 0 {
		return 0, FlowEvent{}, false, nil
	}
	ev = FlowEvent{Flow: flowOf(cev.flow), Kind: EventKind(cev.kind), Errno: syscall.Errno(cev.err)}
	return int(size), ev, true, nil
}

// SetAutoClose sets whether Recv, TryRecv and NextEvent close this side of a flow when they
// pass its peer's close (default true). With false a flow whose peer closed stays open for
// sending until CloseFlow or AbortFlow.
func (c *Channel) SetAutoClose(on bool) error {
	v := C.int(0)
	if on {
		v = 1
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if r, err := C.machnet_set_auto_close(c.ctx, v); r != 0 {
		return fail("machnet_set_auto_close", err)
	}
	return nil
}

// AbortFlow aborts f at once: messages not yet delivered are discarded and the peer sees a reset.
func (c *Channel) AbortFlow(f Flow) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if r, err := C.machnet_abort(c.ctx, f.c()); r != 0 {
		return fail("machnet_abort", err)
	}
	return nil
}

// interrupt makes every call blocked on the channel right now return EINTR (machnet_interrupt).
func (c *Channel) interrupt() {
	C.machnet_interrupt(c.ctx)
}
