// Package machnet is the Go binding of Machnet in Rust: it talks to the machnet sidecar through
// the C ABI (libmachnet, machnet-ffi/include/machnet.h), linked statically, so a built program
// has no libmachnet.so dependency.
//
// The package carries its copy of the C header (machnet.h, regenerated with the library's by
// ci/ffi.sh --update-header), so `go mod vendor` vendors a buildable package. The released module
// (`go get github.com/machnet-rs/machnet-rs/go@v0.1.0`, made by ci/release/go.sh) also carries
// the static library for linux/amd64, lib/linux_amd64/libmachnet.a: go get + go build need no
// Rust. In the repository that file is absent and the linker goes on to the repository's Cargo
// output; build the static library first, from the repository root:
//
//	cargo build --release -p machnet-ffi
//
// then `go build` / `go test` in this directory. With a non-default Cargo target directory, add
// it to the linker's search path: CGO_LDFLAGS="-L$CARGO_TARGET_DIR/release" (CGO_LDFLAGS come
// before the package's flags, so they win over both directories below).
//
// Usage:
//
//	if err := machnet.Init(""); err != nil { ... }   // $MACHNET_SOCKET or /run/machnet/machnet.sock
//	ch, err := machnet.Attach()
//	defer ch.Close()
//	flow, err := ch.Connect(ctx, "0.0.0.0", "10.0.0.2", 888)
//	err = ch.Send(flow, []byte("hello"))
//	n, from, err := ch.Recv(ctx, buf)
//
// Zero-copy (zerocopy.go): ch.Loan(flow, n) lends room in the channel's shared memory (write
// l.Bytes(), then l.Commit(used) or l.Cancel()); ch.RecvZC(ctx) lends a received message in
// place until v.Release(). Their slices are valid only until then: see Loan and View.
//
// A Channel is safe for concurrent use by several goroutines (the C library serialises the
// operations with a mutex per channel and does not hold it while a call blocks); one channel
// per goroutine that does heavy I/O is still the fastest. Errors are *Error values that match
// the sentinel errors below and the underlying syscall.Errno with errors.Is.
package machnet

/*
#cgo linux,amd64 LDFLAGS: -L${SRCDIR}/lib/linux_amd64
#cgo LDFLAGS: -L${SRCDIR}/../target/release -l:libmachnet.a -lgcc_s -lutil -lrt -lpthread -lm -ldl
#include <stdlib.h>
#include "machnet.h"
*/
import "C"

import (
	"context"
	"net/netip"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

// MaxMessageLen is the largest message Machnet carries (8 MiB).
const MaxMessageLen = C.MACHNET_MSG_MAX_LEN

// Version is the library version, e.g. "machnet-rs 0.1.0 (C ABI 1)".
func Version() string { return C.GoString(C.machnet_version()) }

// Init attaches this process to the sidecar listening at socketPath ("" = $MACHNET_SOCKET or
// /run/machnet/machnet.sock). Channels attached earlier keep the previous attachment.
func Init(socketPath string) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if socketPath == "" {
		if r, err := C.machnet_init(); r != 0 {
			return fail("machnet_init", err)
		}
		return nil
	}
	p := C.CString(socketPath)
	defer C.free(unsafe.Pointer(p))
	if r, err := C.machnet_init_at(p); r != 0 {
		return fail("machnet_init_at", err)
	}
	return nil
}

// Flow names one Machnet connection by its 4-tuple (IPv4 addresses in host byte order). Flows
// from Connect have Src = this sidecar; flows from Recv have Src = the peer. Send accepts
// either.
type Flow struct {
	SrcIP, DstIP     uint32
	SrcPort, DstPort uint16
}

func ipOf(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Src is the source address and port.
func (f Flow) Src() netip.AddrPort { return netip.AddrPortFrom(ipOf(f.SrcIP), f.SrcPort) }

// Dst is the destination address and port.
func (f Flow) Dst() netip.AddrPort { return netip.AddrPortFrom(ipOf(f.DstIP), f.DstPort) }

func (f Flow) String() string { return f.Src().String() + " -> " + f.Dst().String() }

func (f Flow) c() C.MachnetFlow_t {
	return C.MachnetFlow_t{src_ip: C.uint32_t(f.SrcIP), dst_ip: C.uint32_t(f.DstIP),
		src_port: C.uint16_t(f.SrcPort), dst_port: C.uint16_t(f.DstPort)}
}

func flowOf(c C.MachnetFlow_t) Flow {
	return Flow{uint32(c.src_ip), uint32(c.dst_ip), uint16(c.src_port), uint16(c.dst_port)}
}

// Channel is one shared-memory channel to the sidecar. Its methods are safe for concurrent use.
type Channel struct {
	ctx  unsafe.Pointer // a libmachnet handle: never dereferenced, checked by the library
	rx   receiver       // Recv's wait in Go's netpoller (recv.go)
	mode int32          // a WaitMode (atomic)
	zc   views          // the borrowed message (zerocopy.go)
}

// Attach opens a channel. Close it when done (a finalizer closes a lost one, gracefully).
func Attach() (*Channel, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	p, err := C.machnet_attach()
	if p == nil {
		return nil, fail("machnet_attach", err)
	}
	return newChannel(p), nil
}

func newChannel(p unsafe.Pointer) *Channel {
	ch := &Channel{ctx: p}
	runtime.SetFinalizer(ch, func(c *Channel) { C.machnet_detach(c.ctx) })
	return ch
}

// Close detaches the channel gracefully, as the process exiting does (docs/CHANNEL.md §5):
// the sidecar still delivers every message whose Send returned, then closes the channel's flows
// (the peers see each flow end after its last message). Calls blocked on the channel return
// ErrClosed, and so does every later call.
func (c *Channel) Close() error {
	return c.detach(false)
}

// Abort detaches the channel like Close, but aborts its flows at once: messages not yet
// delivered are discarded and the peers see a reset.
func (c *Channel) Abort() error {
	return c.detach(true)
}

func (c *Channel) detach(abort bool) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	runtime.SetFinalizer(c, nil)
	c.rx.close()
	if abort {
		if r, err := C.machnet_detach_abort(c.ctx); r != 0 {
			return fail("machnet_detach_abort", err)
		}
	} else if r, err := C.machnet_detach(c.ctx); r != 0 {
		return fail("machnet_detach", err)
	}
	return nil
}

// ListenContext is Listen honouring ctx the Go way: a ctx already done fails at once with
// ctx.Err(). The call itself is one round trip to the local sidecar.
func (c *Channel) ListenContext(ctx context.Context, localIP string, port uint16) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.Listen(localIP, port)
}

// Listen accepts flows to Machnet port `port`; localIP is the sidecar's address or "0.0.0.0".
func (c *Channel) Listen(localIP string, port uint16) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ip := C.CString(localIP)
	defer C.free(unsafe.Pointer(ip))
	if r, err := C.machnet_listen(c.ctx, ip, C.uint16_t(port)); r != 0 {
		return fail("machnet_listen", err)
	}
	return nil
}

// Connect opens a flow to remoteIP:port. It returns when the sidecar answers (one round trip,
// or a refusal); ctx's deadline bounds the wait (default 10 s). A ctx cancelled while the
// connection is being set up is noticed when the call returns: the new flow is then closed.
func (c *Channel) Connect(ctx context.Context, localIP, remoteIP string, port uint16) (Flow, error) {
	if err := ctx.Err(); err != nil {
		return Flow{}, err
	}
	timeout := C.int(-1)
	if dl, ok := ctx.Deadline(); ok {
		ms := time.Until(dl).Milliseconds()
		if ms <= 0 {
			return Flow{}, context.DeadlineExceeded
		}
		if ms < 1<<30 {
			timeout = C.int(ms)
		}
	}
	l, r := C.CString(localIP), C.CString(remoteIP)
	defer C.free(unsafe.Pointer(l))
	defer C.free(unsafe.Pointer(r))
	var cf C.MachnetFlow_t
	runtime.LockOSThread()
	rc, err := C.machnet_connect_timeout(c.ctx, l, r, C.uint16_t(port), &cf, timeout)
	var e error
	if rc != 0 {
		e = fail("machnet_connect", err)
	}
	runtime.UnlockOSThread()
	if e != nil {
		if ctx.Err() != nil {
			return Flow{}, ctx.Err()
		}
		return Flow{}, e
	}
	f := flowOf(cf)
	if ctx.Err() != nil {
		_ = c.CloseFlow(f)
		return Flow{}, ctx.Err()
	}
	return f, nil
}

// CloseFlow closes f gracefully: messages already sent are delivered, then the flow ends.
func (c *Channel) CloseFlow(f Flow) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if r, err := C.machnet_close(c.ctx, f.c()); r != 0 {
		return fail("machnet_close", err)
	}
	return nil
}

// Send sends data as one message on f (1 byte to MaxMessageLen). It blocks while the sidecar
// applies back-pressure. data is copied before Send returns.
func (c *Channel) Send(f Flow, data []byte) error {
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if r, err := C.machnet_send(c.ctx, f.c(), p, C.size_t(len(data))); r != 0 {
		return fail("machnet_send", err)
	}
	runtime.KeepAlive(data)
	return nil
}

// Peek returns the size of the next waiting message (0: none) without consuming it.
func (c *Channel) Peek() (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n, err := C.machnet_peek(c.ctx)
	if n < 0 {
		return 0, fail("machnet_peek", err)
	}
	return int(n), nil
}

// TryRecv receives a waiting message into buf without blocking; n == 0 means none was waiting.
func (c *Channel) TryRecv(buf []byte) (int, Flow, error) {
	return c.recv(buf, 0)
}

// recv is machnet_recv (timeoutMs 0): the next message if one is waiting (n == 0: none; the
// library then arms the channel's eventfd for Recv's wait); otherwise machnet_recv_timeout
// (-1: no limit), which sleeps in the library on this OS thread.
func (c *Channel) recv(buf []byte, timeoutMs C.int) (int, Flow, error) {
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	var cf C.MachnetFlow_t
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var n C.ssize_t
	var err error
	if timeoutMs == 0 {
		n, err = C.machnet_recv(c.ctx, p, C.size_t(len(buf)), &cf)
	} else {
		n, err = C.machnet_recv_timeout(c.ctx, p, C.size_t(len(buf)), &cf, timeoutMs)
	}
	runtime.KeepAlive(buf)
	if n < 0 {
		e := fail("machnet_recv", err)
		if e.Errno == syscall.EMSGSIZE {
			if m, perr := C.machnet_peek(c.ctx); perr == nil && m > 0 {
				e.Needed = int(m)
			}
		}
		return 0, Flow{}, e
	}
	return int(n), flowOf(cf), nil
}
