package machnet

/*
#include <stdlib.h>
#include "machnet.h"
*/
import "C"

import (
	"runtime"
	"sync"
	"unsafe"
)

// Sidecar is one attachment to a Machnet sidecar (Open). Unlike Init, it is not process-wide:
// a program may open several sidecars and attach channels to each. Safe for concurrent use.
type Sidecar struct {
	h unsafe.Pointer // a libmachnet sidecar handle: never dereferenced, checked by the library

	dialOnce sync.Once
	dialer   *Dialer // DialContext's (netconn.go)
}

// Open attaches to the sidecar whose control socket is socketPath ("" = $MACHNET_SOCKET, else
// /run/machnet/machnet.sock, else the original Machnet's /var/run/machnet/machnet_ctrl.sock).
// Close it when done; channels attached through it stay usable until they are closed.
func Open(socketPath string) (*Sidecar, error) {
	var p *C.char
	if socketPath != "" {
		p = C.CString(socketPath)
		defer C.free(unsafe.Pointer(p))
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h, err := C.machnet_open(p)
	if h == nil {
		return nil, fail("machnet_open", err)
	}
	s := &Sidecar{h: h}
	runtime.SetFinalizer(s, func(s *Sidecar) { C.machnet_close_sidecar(s.h) })
	return s, nil
}

// Attach opens a channel on this sidecar (as the package-level Attach does on Init's).
func (s *Sidecar) Attach() (*Channel, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	p, err := C.machnet_attach_to(s.h)
	if p == nil {
		return nil, fail("machnet_attach_to", err)
	}
	return newChannel(p), nil
}

// Close releases the sidecar handle; its channels stay usable. Later calls fail with ErrClosed.
func (s *Sidecar) Close() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	runtime.SetFinalizer(s, nil)
	s.dialOnce.Do(func() {})
	if s.dialer != nil {
		_ = s.dialer.Close()
	}
	if r, err := C.machnet_close_sidecar(s.h); r != 0 {
		return fail("machnet_close_sidecar", err)
	}
	return nil
}

// Engines is how many engines the sidecar runs (a server that wants every engine listens on
// this many channels: Listen does).
func (s *Sidecar) Engines() (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n, err := C.machnet_sidecar_engines(s.h)
	if n < 0 {
		return 0, fail("machnet_sidecar_engines", err)
	}
	return int(n), nil
}
