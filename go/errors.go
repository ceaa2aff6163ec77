package machnet

/*
#include "machnet.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"syscall"
)

// Sentinel errors; an *Error matches them with errors.Is (see errorTable for which code names
// match which).
var (
	// ErrClosed: the channel was closed (Close), never attached, or closed by the sidecar.
	// (ERR_MACHNET_CHANNEL_CLOSED: EBADF, ECONNABORTED)
	ErrClosed = errors.New("machnet: channel closed")
	// ErrNotInitialized: Init was not called (or failed). (Attach failing with ENOTCONN)
	ErrNotInitialized = errors.New("machnet: not initialised")
	// ErrSidecarGone: the sidecar exited, crashed or is shutting down.
	// (ERR_MACHNET_SIDECAR_GONE, ECONNRESET; a reset flow is ErrFlowReset)
	ErrSidecarGone = errors.New("machnet: sidecar gone")
	// ErrRefused: the remote host refused the connection. (ERR_MACHNET_CONNECTION_REFUSED)
	ErrRefused = errors.New("machnet: connection refused")
	// ErrFlowClosed: the flow is not open on this channel, or this side closed it.
	// (ERR_MACHNET_FLOW_CLOSED: ENOTCONN, EPIPE)
	ErrFlowClosed = errors.New("machnet: flow not open")
	// ErrMessageSize: the message is too large, or does not fit the receive buffer (it stays
	// queued; Error.Needed tells the size). (ERR_MACHNET_MESSAGE_TOO_LARGE,
	// ERR_MACHNET_BUFFER_TOO_SMALL: EMSGSIZE)
	ErrMessageSize = errors.New("machnet: message size")
	// ErrPortInUse: another channel listens on the port. (ERR_MACHNET_PORT_IN_USE)
	ErrPortInUse = errors.New("machnet: port in use")
)

// errorTable is the binding's one error mapping: each code name libmachnet reports
// (machnet_last_error_code, the names of rust-client's ErrorKind), its errno, and the sentinel
// an *Error with that code matches (nil: none). Where no code name is available (an *Error made
// by the binding itself), the first row with the errno gives it.
var errorTable = []struct {
	code     string
	errno    syscall.Errno
	sentinel error
}{
	{"ERR_MACHNET_EXHAUSTED", syscall.EAGAIN, nil},
	{"ERR_MACHNET_WOULD_BLOCK", syscall.EAGAIN, nil},
	{"ERR_MACHNET_TIMEOUT", syscall.ETIMEDOUT, nil},
	{"ERR_MACHNET_INTERRUPTED", syscall.EINTR, nil},
	{"ERR_MACHNET_INVALID_ARGUMENT", syscall.EINVAL, nil},
	{"ERR_MACHNET_MESSAGE_TOO_LARGE", syscall.EMSGSIZE, ErrMessageSize},
	{"ERR_MACHNET_BUFFER_TOO_SMALL", syscall.EMSGSIZE, ErrMessageSize},
	{"ERR_MACHNET_FLOW_CLOSED", syscall.ENOTCONN, ErrFlowClosed},
	{"ERR_MACHNET_FLOW_CLOSED", syscall.EPIPE, ErrFlowClosed},
	{"ERR_MACHNET_FLOW_RESET", syscall.ECONNRESET, ErrFlowReset},
	{"ERR_MACHNET_CONNECTION_REFUSED", syscall.ECONNREFUSED, ErrRefused},
	{"ERR_MACHNET_CHANNEL_CLOSED", syscall.ECONNABORTED, ErrClosed},
	{"ERR_MACHNET_CHANNEL_CLOSED", syscall.EBADF, ErrClosed},
	{"ERR_MACHNET_SIDECAR_UNREACHABLE", syscall.ENOENT, nil},
	{"ERR_MACHNET_SIDECAR_GONE", syscall.ECONNRESET, ErrSidecarGone},
	{"ERR_MACHNET_REFUSED", syscall.EPERM, nil},
	{"ERR_MACHNET_PERMISSION_DENIED", syscall.EACCES, nil},
	{"ERR_MACHNET_PROTOCOL", syscall.EPROTO, nil},
	{"ERR_MACHNET_VERSION_MISMATCH", syscall.EPROTO, nil},
	{"ERR_MACHNET_PORT_IN_USE", syscall.EADDRINUSE, ErrPortInUse},
	{"ERR_MACHNET_IO", syscall.EIO, nil},
}

// codeOfErrno is the code name an errno stands for when libmachnet gave none.
func codeOfErrno(errno syscall.Errno) string {
	for _, r := range errorTable {
		if r.errno == errno {
			return r.code
		}
	}
	return "ERR_MACHNET_IO"
}

// sentinelOf is the sentinel an *Error with code name code matches (nil: none).
func sentinelOf(code string) error {
	for _, r := range errorTable {
		if r.code == code {
			return r.sentinel
		}
	}
	return nil
}

// Error is a failed Machnet call.
type Error struct {
	Op     string        // the C function
	Errno  syscall.Errno // errno as set by libmachnet
	Code   string        // the stable code name, e.g. "ERR_MACHNET_FLOW_RESET" (machnet_last_error_code)
	Msg    string        // libmachnet's detailed message (machnet_last_error)
	Needed int           // for ErrMessageSize on receive: the size of the waiting message
}

func (e *Error) Error() string {
	if e.Msg != "" {
		return fmt.Sprintf("%s: %s", e.Op, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Op, C.GoString(C.machnet_strerror(C.int(e.Errno))))
}

// Unwrap returns the errno, so errors.Is(err, syscall.EINVAL) works.
func (e *Error) Unwrap() error { return e.Errno }

// Is matches the package's sentinel errors through errorTable.
func (e *Error) Is(target error) bool {
	// The C ABI reports machnet_attach before machnet_init as ENOTCONN (a flow-closed code).
	notInit := e.Op == "machnet_attach" && e.Errno == syscall.ENOTCONN
	if target == ErrNotInitialized || notInit {
		return target == ErrNotInitialized && notInit
	}
	code := e.Code
	if code == "" {
		code = codeOfErrno(e.Errno)
	}
	s := sentinelOf(code)
	return s != nil && s == target
}

// newError is an *Error the binding detects itself (no libmachnet call failed).
func newError(op string, errno syscall.Errno, msg string) *Error {
	return &Error{Op: op, Errno: errno, Code: codeOfErrno(errno), Msg: msg}
}

// fail builds an *Error; it must run on the OS thread that made the failing call (callers hold
// runtime.LockOSThread) because the detailed message and code name are thread-local.
func fail(op string, err error) *Error {
	errno, ok := err.(syscall.Errno)
	if !ok {
		errno = syscall.EIO
	}
	e := &Error{Op: op, Errno: errno, Code: C.GoString(C.machnet_last_error_code()),
		Msg: C.GoString(C.machnet_last_error())}
	if e.Code == "" {
		e.Code = codeOfErrno(errno)
	}
	return e
}
