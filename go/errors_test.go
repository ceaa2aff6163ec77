package machnet

import (
	"errors"
	"os"
	"regexp"
	"syscall"
	"testing"
)

// The table knows exactly the code names of rust-client's ErrorKind (a new kind must get a row).
func TestErrorTableCoversEveryErrorKind(t *testing.T) {
	src, err := os.ReadFile("../rust-client/src/error_kind.rs")
	if err != nil {
		t.Fatalf("reading the ErrorKind table: %v", err)
	}
	rust := map[string]bool{}
	for _, m := range regexp.MustCompile(`=> \(libc::\w+, "(ERR_MACHNET_\w+)"\)`).FindAllStringSubmatch(string(src), -1) {
		rust[m[1]] = true
	}
	if len(rust) < 19 {
		t.Fatalf("found only %d code names in error_kind.rs: %v", len(rust), rust)
	}
	ours := map[string]bool{}
	for _, r := range errorTable {
		ours[r.code] = true
		if !rust[r.code] {
			t.Errorf("errorTable has %s, which ErrorKind does not", r.code)
		}
	}
	for c := range rust {
		if !ours[c] {
			t.Errorf("ErrorKind has %s, which errorTable does not", c)
		}
	}
}

// Each code name matches its sentinel and no other; the code, not the errno, decides (ECONNRESET
// is a reset flow or a gone sidecar).
func TestErrorMatchesSentinelsByCode(t *testing.T) {
	sentinels := []error{ErrClosed, ErrNotInitialized, ErrSidecarGone, ErrRefused, ErrFlowClosed,
		ErrMessageSize, ErrPortInUse, ErrFlowReset, ErrPeerClosed, ErrFlowTimedOut}
	cases := []struct {
		err  *Error
		want error // nil: none
	}{
		{&Error{Op: "machnet_connect", Errno: syscall.ECONNRESET, Code: "ERR_MACHNET_FLOW_RESET"}, ErrFlowReset},
		{&Error{Op: "machnet_send", Errno: syscall.ECONNRESET, Code: "ERR_MACHNET_SIDECAR_GONE"}, ErrSidecarGone},
		{&Error{Op: "machnet_connect", Errno: syscall.ECONNREFUSED, Code: "ERR_MACHNET_CONNECTION_REFUSED"}, ErrRefused},
		// A refused control socket is an unreachable sidecar, not a refused flow.
		{&Error{Op: "machnet_init_at", Errno: syscall.ECONNREFUSED, Code: "ERR_MACHNET_SIDECAR_UNREACHABLE"}, nil},
		{&Error{Op: "machnet_send", Errno: syscall.ENOTCONN, Code: "ERR_MACHNET_FLOW_CLOSED"}, ErrFlowClosed},
		{&Error{Op: "machnet_send", Errno: syscall.EPIPE, Code: "ERR_MACHNET_FLOW_CLOSED"}, ErrFlowClosed},
		{&Error{Op: "machnet_attach", Errno: syscall.ENOTCONN, Code: "ERR_MACHNET_FLOW_CLOSED"}, ErrNotInitialized},
		{&Error{Op: "machnet_send", Errno: syscall.EBADF, Code: "ERR_MACHNET_CHANNEL_CLOSED"}, ErrClosed},
		{&Error{Op: "machnet_recv", Errno: syscall.ECONNABORTED, Code: "ERR_MACHNET_CHANNEL_CLOSED"}, ErrClosed},
		{&Error{Op: "machnet_send", Errno: syscall.EMSGSIZE, Code: "ERR_MACHNET_MESSAGE_TOO_LARGE"}, ErrMessageSize},
		{&Error{Op: "machnet_recv", Errno: syscall.EMSGSIZE, Code: "ERR_MACHNET_BUFFER_TOO_SMALL"}, ErrMessageSize},
		{&Error{Op: "machnet_listen", Errno: syscall.EADDRINUSE, Code: "ERR_MACHNET_PORT_IN_USE"}, ErrPortInUse},
		{&Error{Op: "machnet_connect", Errno: syscall.ETIMEDOUT, Code: "ERR_MACHNET_TIMEOUT"}, nil},
		{&Error{Op: "machnet_send", Errno: syscall.EINVAL, Code: "ERR_MACHNET_INVALID_ARGUMENT"}, nil},
		// Without a code name (an *Error literal), the errno decides.
		{&Error{Op: "machnet_send", Errno: syscall.ENOTCONN}, ErrFlowClosed},
		{newError("dup", syscall.EMFILE, "too many open files"), nil},
	}
	for _, c := range cases {
		for _, s := range sentinels {
			if got := errors.Is(c.err, s); got != (s == c.want) {
				t.Errorf("%s %s (%v): errors.Is(%v) = %v", c.err.Op, c.err.Code, c.err.Errno, s, got)
			}
		}
		if !errors.Is(c.err, c.err.Errno) {
			t.Errorf("%s %s: does not unwrap to its errno %v", c.err.Op, c.err.Code, c.err.Errno)
		}
	}
}

// A code name a binding makes up is the first row for the errno.
func TestCodeOfErrno(t *testing.T) {
	for errno, want := range map[syscall.Errno]string{
		syscall.ECONNRESET: "ERR_MACHNET_FLOW_RESET",
		syscall.EPIPE:      "ERR_MACHNET_FLOW_CLOSED",
		syscall.EBADF:      "ERR_MACHNET_CHANNEL_CLOSED",
		syscall.EINVAL:     "ERR_MACHNET_INVALID_ARGUMENT",
		syscall.EMFILE:     "ERR_MACHNET_IO",
	} {
		if got := codeOfErrno(errno); got != want {
			t.Errorf("codeOfErrno(%v) = %s; want %s", errno, got, want)
		}
	}
	if e := newError("machnet_set_event_limit", syscall.EINVAL, "negative limit"); e.Code != "ERR_MACHNET_INVALID_ARGUMENT" {
		t.Errorf("newError code %q", e.Code)
	}
}
