package machnet

// The cross-language conformance cases (conformance/cases.json, described in
// conformance/README.md), run against the apps ci/ffi.sh starts:
//   MACHNET_CONFORMANCE_CASES        cases.json (default ../conformance/cases.json, i.e. the
//                                    repository's conformance/cases.json seen from go/)
//   MACHNET_CONFORMANCE_SERVER_IP    the sidecar the apps are attached to (127.0.0.1)
//   MACHNET_CONFORMANCE_ECHO_PORT    `machnet-echo server`
//   MACHNET_CONFORMANCE_KV_PORT      `machnet-kv server`
//   MACHNET_CONFORMANCE_RAFT_PORT    the KV port of the Raft cluster's leader (examples/raft)
//   MACHNET_TEST_SOCK / MACHNET_TEST_PEER_SOCK  the client sidecar (TestMain attaches to it) and
//                                    the server sidecar (peer_goes_away and
//                                    peer_closes_after_sending listen on it)
// One subtest per case, in the file's order, named after the case.
//
// Error names (conformance/README.md) as this binding reports them; every one is an *Error
// whose Code is the README's code name (confCodes), as the Python and Node.js runners check:
//   refused          errors.Is(err, ErrRefused)            ERR_MACHNET_CONNECTION_REFUSED
//   invalid_argument errors.Is(err, syscall.EINVAL)        ERR_MACHNET_INVALID_ARGUMENT
//   too_large        errors.Is(err, ErrMessageSize)        ERR_MACHNET_MESSAGE_TOO_LARGE
//   reset            errors.Is(err, ErrFlowClosed)         ERR_MACHNET_FLOW_CLOSED (ENOTCONN, not
//                    ECONNRESET): a send fails because the flow is no longer open ("no open
//                    flow ... on this channel"); the reset itself is the flow event (below).
//   closed           errors.Is(err, ErrFlowClosed)         ERR_MACHNET_FLOW_CLOSED (ENOTCONN, or
//                    EPIPE while this side's close is under way; never ErrSidecarGone): a
//                    receive that passes the peer's graceful close closes this side.
//
// Event names (the "event" field) are FlowEvent.Kind.String() of the first event NextEvent
// returns for the flow: "reset" (EventReset, Errno ECONNRESET, errors.Is(ev.Err(),
// ErrFlowReset)), "peer_closed" (EventPeerClosed, errors.Is(ev.Err(), ErrPeerClosed); an
// EventClosed with Errno 0 follows, since a receive closes this side).

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

type confStep struct {
	Request      string  `json:"request"`
	Status       string  `json:"status"`
	ID           uint32  `json:"id"`
	Body         *string `json:"body"`
	BodyContains *string `json:"body_contains"`
}

type confCase struct {
	Name      string     `json:"name"`
	App       *string    `json:"app"`
	Do        string     `json:"do"`
	Sizes     []int      `json:"sizes"`
	Size      int        `json:"size"`
	Count     int        `json:"count"`
	Flows     int        `json:"flows"`
	TimeoutMs int        `json:"timeout_ms"`
	Port      uint16     `json:"port"`
	Error     string     `json:"error"`
	Event     string     `json:"event"`
	Steps     []confStep `json:"steps"`
	KeyPrefix string     `json:"key_prefix"`
}

type confFile struct {
	Version int        `json:"version"`
	Cases   []confCase `json:"cases"`
}

type confEnv struct {
	serverIP   string
	echoPort   uint16
	kvPort     uint16
	raftPort   uint16
	peerSock   string
	clientSock string
}

// confPayload is the shared payload pattern: byte i of a size-n message is (i*7 + n) mod 256.
func confPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i*7 + n) % 256)
	}
	return b
}

func confPort(t *testing.T, name string) uint16 {
	t.Helper()
	p, err := strconv.ParseUint(os.Getenv(name), 10, 16)
	if err != nil {
		t.Fatalf("%s=%q: %v (run the suite with ci/ffi.sh)", name, os.Getenv(name), err)
	}
	return uint16(p)
}

func TestConformance(t *testing.T) {
	path := os.Getenv("MACHNET_CONFORMANCE_CASES")
	if path == "" {
		path = "../conformance/cases.json"
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the cases: %v", err)
	}
	var file confFile
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	if file.Version != 1 || len(file.Cases) == 0 {
		t.Fatalf("%s: version %d with %d cases; this runner knows version 1", path, file.Version, len(file.Cases))
	}
	env := confEnv{
		serverIP:   os.Getenv("MACHNET_CONFORMANCE_SERVER_IP"),
		echoPort:   confPort(t, "MACHNET_CONFORMANCE_ECHO_PORT"),
		kvPort:     confPort(t, "MACHNET_CONFORMANCE_KV_PORT"),
		raftPort:   confPort(t, "MACHNET_CONFORMANCE_RAFT_PORT"),
		peerSock:   os.Getenv("MACHNET_TEST_PEER_SOCK"),
		clientSock: os.Getenv("MACHNET_TEST_SOCK"),
	}
	if env.serverIP == "" {
		t.Fatal("MACHNET_CONFORMANCE_SERVER_IP is not set (run the suite with ci/ffi.sh)")
	}
	for _, c := range file.Cases {
		c := c
		t.Run(c.Name, func(t *testing.T) { runConfCase(t, env, c) })
	}
}

func runConfCase(t *testing.T, env confEnv, c confCase) {
	ch, err := Attach()
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	var flows []Flow
	defer func() {
		for _, f := range flows {
			_ = ch.CloseFlow(f)
		}
		_ = ch.Close()
	}()
	connect := func(port uint16) Flow {
		t.Helper()
		f, err := ch.Connect(within(10*time.Second), "0.0.0.0", env.serverIP, port)
		if err != nil {
			t.Fatalf("connect to %s:%d: %v", env.serverIP, port, err)
		}
		flows = append(flows, f)
		return f
	}
	appPort := func() uint16 {
		t.Helper()
		if c.App == nil {
			t.Fatalf("case %q has no app", c.Name)
		}
		switch *c.App {
		case "echo":
			return env.echoPort
		case "kv":
			return env.kvPort
		case "raft": // the same request format as kv, served by the Raft cluster's leader
			return env.raftPort
		}
		t.Fatalf("unknown app %q", *c.App)
		return 0
	}
	buf := make([]byte, MaxMessageLen)
	recv := func(what string) ([]byte, Flow) {
		t.Helper()
		n, from, err := ch.Recv(within(30*time.Second), buf)
		if err != nil {
			t.Fatalf("%s: receive: %v", what, err)
		}
		return buf[:n], from
	}

	switch c.Do {
	case "echo":
		f := connect(appPort())
		for _, size := range c.Sizes {
			msg := confPayload(size)
			if err := ch.Send(f, msg); err != nil {
				t.Fatalf("size %d: send: %v", size, err)
			}
			got, from := recv(fmt.Sprintf("size %d", size))
			if from.Src() != f.Dst() || from.Dst() != f.Src() {
				t.Fatalf("size %d: echo arrived on %v, sent on %v", size, from, f)
			}
			confSame(t, fmt.Sprintf("size %d", size), msg, got)
		}

	case "echo_pipelined":
		f := connect(appPort())
		msgs := make([][]byte, c.Count)
		for k := range msgs {
			m := confPayload(c.Size)
			binary.LittleEndian.PutUint32(m, uint32(k))
			msgs[k] = m
			if err := ch.Send(f, m); err != nil {
				t.Fatalf("message %d: send: %v", k, err)
			}
		}
		for k, m := range msgs {
			got, from := recv(fmt.Sprintf("message %d", k))
			if from.Src() != f.Dst() {
				t.Fatalf("message %d arrived on %v, sent on %v", k, from, f)
			}
			if len(got) >= 4 && binary.LittleEndian.Uint32(got) != uint32(k) {
				t.Fatalf("message %d: got message %d (out of order)", k, binary.LittleEndian.Uint32(got))
			}
			confSame(t, fmt.Sprintf("message %d", k), m, got)
		}

	case "echo_flows":
		port := appPort()
		fs := make([]Flow, c.Flows)
		for i := range fs {
			fs[i] = connect(port)
		}
		msg := confPayload(c.Size)
		for round := 0; round < c.Count; round++ {
			for i, f := range fs {
				if err := ch.Send(f, msg); err != nil {
					t.Fatalf("round %d flow %d: send: %v", round, i, err)
				}
			}
			seen := make([]bool, len(fs))
			for k := 0; k < len(fs); k++ {
				got, from := recv(fmt.Sprintf("round %d message %d", round, k))
				idx := -1
				for i, f := range fs {
					if from.Src() == f.Dst() && from.Dst() == f.Src() {
						idx = i
					}
				}
				if idx < 0 {
					t.Fatalf("round %d: a message arrived on %v, none of the flows", round, from)
				}
				if seen[idx] {
					t.Fatalf("round %d: two messages on flow %d (%v)", round, idx, from)
				}
				seen[idx] = true
				confSame(t, fmt.Sprintf("round %d flow %d", round, idx), msg, got)
			}
		}

	case "recv_timeout":
		want := time.Duration(c.TimeoutMs) * time.Millisecond
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), want)
		n, _, err := ch.Recv(ctx, buf)
		dt := time.Since(t0)
		cancel()
		if n != 0 || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("receive with a %v timeout: %d bytes, err %v; want context.DeadlineExceeded", want, n, err)
		}
		if dt < want {
			t.Fatalf("receive with a %v timeout returned early, after %v", want, dt)
		}
		if dt > want+3*time.Second {
			t.Fatalf("receive with a %v timeout returned only after %v", want, dt)
		}

	case "connect_error":
		f, err := ch.Connect(within(10*time.Second), "0.0.0.0", env.serverIP, c.Port)
		if err == nil {
			flows = append(flows, f)
			t.Fatalf("connect to %s:%d succeeded; want %s", env.serverIP, c.Port, c.Error)
		}
		confWantError(t, "connect", c.Error, err)

	case "send_error":
		f := connect(appPort())
		err := ch.Send(f, make([]byte, c.Size))
		if err == nil {
			t.Fatalf("send of %d bytes succeeded; want %s", c.Size, c.Error)
		}
		confWantError(t, fmt.Sprintf("send of %d bytes", c.Size), c.Error, err)
		one := confPayload(1)
		if err := ch.Send(f, one); err != nil {
			t.Fatalf("1-byte send after the failed one: %v", err)
		}
		got, _ := recv("1-byte echo after the failed send")
		confSame(t, "1-byte echo after the failed send (nothing of the failed send may arrive)", one, got)

	case "peer_goes_away":
		confPeerGoesAway(t, env, c, ch, connect, buf)

	case "peer_closes_after_sending":
		confPeerClosesAfterSending(t, env, c, ch, connect, buf)

	case "kv":
		f := connect(appPort())
		for i, s := range c.Steps {
			what := fmt.Sprintf("step %d (request %s)", i, s.Request)
			req, err := hex.DecodeString(s.Request)
			if err != nil {
				t.Fatalf("%s: bad hex: %v", what, err)
			}
			if err := ch.Send(f, req); err != nil {
				t.Fatalf("%s: send: %v", what, err)
			}
			got, _ := recv(what)
			confKVResponse(t, what, s, got)
		}

	case "kv_pipelined":
		f := connect(appPort())
		key := func(i int) []byte { return []byte(c.KeyPrefix + strconv.Itoa(i)) }
		req := func(op byte, i int, val []byte) []byte {
			k := key(i)
			m := []byte{op, 0, 0, 0, 0, 0, 0}
			binary.LittleEndian.PutUint32(m[1:], uint32(i))
			binary.LittleEndian.PutUint16(m[5:], uint16(len(k)))
			m = append(m, k...)
			return append(m, val...)
		}
		val := func(i int) []byte {
			v := make([]byte, 4)
			binary.LittleEndian.PutUint32(v, uint32(i))
			return v
		}
		for _, phase := range []struct {
			name string
			op   byte
		}{{"SET", 2}, {"GET", 1}} {
			for i := 0; i < c.Count; i++ {
				var v []byte
				if phase.op == 2 {
					v = val(i)
				}
				if err := ch.Send(f, req(phase.op, i, v)); err != nil {
					t.Fatalf("%s %d: send: %v", phase.name, i, err)
				}
			}
			for i := 0; i < c.Count; i++ {
				what := fmt.Sprintf("%s %d", phase.name, i)
				got, _ := recv(what)
				body := ""
				if phase.op == 1 {
					body = hex.EncodeToString(val(i))
				}
				confKVResponse(t, what, confStep{Status: "ok", ID: uint32(i), Body: &body}, got)
			}
		}

	default:
		t.Fatalf("unknown do %q", c.Do)
	}
}

func confSame(t *testing.T, what string, want, got []byte) {
	t.Helper()
	if bytes.Equal(want, got) {
		return
	}
	if len(want) != len(got) {
		t.Fatalf("%s: %d bytes received, %d sent", what, len(got), len(want))
	}
	for i := range want {
		if want[i] != got[i] {
			t.Fatalf("%s: byte %d differs: sent %#02x, received %#02x", what, i, want[i], got[i])
		}
	}
}

// confWantError checks err against a conformance error name (see the table at the top).
func confWantError(t *testing.T, what, name string, err error) {
	t.Helper()
	var ok bool
	switch name {
	case "refused":
		ok = errors.Is(err, ErrRefused)
	case "invalid_argument":
		ok = errors.Is(err, syscall.EINVAL)
	case "too_large":
		ok = errors.Is(err, ErrMessageSize)
	case "reset":
		ok = errors.Is(err, ErrFlowClosed)
	case "closed":
		ok = errors.Is(err, ErrFlowClosed) && !errors.Is(err, ErrSidecarGone)
	default:
		t.Fatalf("%s: unknown error name %q", what, name)
	}
	if !ok {
		t.Fatalf("%s failed with %v (%T); want %s", what, err, err, name)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%s failed with %v (%T), not an *Error; want %s", what, err, err, name)
	}
	if e.Code != confCodes[name] {
		t.Fatalf("%s: code %q (%v); want %s (%s)", what, e.Code, err, confCodes[name], name)
	}
}

// confCodes is the code name of each error name, the same in every binding
// (conformance/README.md).
var confCodes = map[string]string{
	"refused":          "ERR_MACHNET_CONNECTION_REFUSED",
	"invalid_argument": "ERR_MACHNET_INVALID_ARGUMENT",
	"too_large":        "ERR_MACHNET_MESSAGE_TOO_LARGE",
	"reset":            "ERR_MACHNET_FLOW_CLOSED",
	"closed":           "ERR_MACHNET_FLOW_CLOSED",
}

var confStatus = map[string]byte{"ok": 0, "not_found": 1, "bad_request": 2, "server_error": 3}

func confKVResponse(t *testing.T, what string, s confStep, got []byte) {
	t.Helper()
	want, known := confStatus[s.Status]
	if !known {
		t.Fatalf("%s: unknown status %q", what, s.Status)
	}
	if len(got) < 5 {
		t.Fatalf("%s: response of %d bytes (%x), shorter than its header", what, len(got), got)
	}
	body := got[5:]
	if got[0] != want {
		t.Fatalf("%s: status %d, want %d (%s); body %q", what, got[0], want, s.Status, body)
	}
	if id := binary.LittleEndian.Uint32(got[1:5]); id != s.ID {
		t.Fatalf("%s: id %d, want %d", what, id, s.ID)
	}
	if s.Body != nil {
		wantBody, err := hex.DecodeString(*s.Body)
		if err != nil {
			t.Fatalf("%s: bad hex body in the case: %v", what, err)
		}
		if !bytes.Equal(body, wantBody) {
			t.Fatalf("%s: body %x, want %x", what, body, wantBody)
		}
	}
	if s.BodyContains != nil && !strings.Contains(string(body), *s.BodyContains) {
		t.Fatalf("%s: body %q does not contain %q", what, body, *s.BodyContains)
	}
}

// confListener attaches a channel to the server sidecar and listens on port. Init is
// process-wide, but a channel keeps the sidecar it was attached to, so the listener is attached
// after Init(server sidecar) and Init(client sidecar) is restored at once.
func confListener(t *testing.T, env confEnv, port uint16) *Channel {
	t.Helper()
	if env.peerSock == "" || env.clientSock == "" {
		t.Fatal("MACHNET_TEST_PEER_SOCK / MACHNET_TEST_SOCK are not set (run the suite with ci/ffi.sh)")
	}
	if err := Init(env.peerSock); err != nil {
		t.Fatalf("init on the server sidecar: %v", err)
	}
	server, err := Attach()
	if ierr := Init(env.clientSock); ierr != nil {
		t.Fatalf("re-init on the client sidecar: %v", ierr)
	}
	if err != nil {
		t.Fatalf("attach on the server sidecar: %v", err)
	}
	if err := server.Listen("0.0.0.0", port); err != nil {
		_ = server.Close()
		t.Fatalf("listen on the server sidecar's port %d: %v", port, err)
	}
	return server
}

// confPeerGoesAway: a second channel on the server sidecar listens; the client connects and
// exchanges one message; then the listening channel is aborted and the client's flow must end.
func confPeerGoesAway(t *testing.T, env confEnv, c confCase, ch *Channel, connect func(uint16) Flow, buf []byte) {
	server := confListener(t, env, c.Port)
	serverOpen := true
	defer func() {
		if serverOpen {
			_ = server.Close()
		}
	}()
	f := connect(c.Port)
	ask := confPayload(100)
	if err := ch.Send(f, ask); err != nil {
		t.Fatalf("send to the listener: %v", err)
	}
	sbuf := make([]byte, 1000)
	n, sf, err := server.Recv(within(10*time.Second), sbuf)
	if err != nil {
		t.Fatalf("listener's receive: %v", err)
	}
	confSame(t, "message at the listener", ask, sbuf[:n])
	answer := confPayload(33)
	if err := server.Send(sf, answer); err != nil {
		t.Fatalf("listener's answer: %v", err)
	}
	m, _, err := ch.Recv(within(10*time.Second), buf)
	if err != nil {
		t.Fatalf("receive of the listener's answer: %v", err)
	}
	confSame(t, "the listener's answer", answer, buf[:m])

	serverOpen = false
	if err := server.Abort(); err != nil {
		t.Fatalf("aborting the listening channel: %v", err)
	}
	confFlowEnds(t, c, ch, f, buf)
}

// confPeerClosesAfterSending: the listener receives one message, sends one message of each
// size and at once closes its channel gracefully; the client receives them all, then its flow
// ends.
func confPeerClosesAfterSending(t *testing.T, env confEnv, c confCase, ch *Channel, connect func(uint16) Flow, buf []byte) {
	server := confListener(t, env, c.Port)
	serverOpen := true
	defer func() {
		if serverOpen {
			_ = server.Close()
		}
	}()
	f := connect(c.Port)
	if err := ch.Send(f, []byte("ping")); err != nil {
		t.Fatalf("send to the listener: %v", err)
	}
	sbuf := make([]byte, 16)
	n, sf, err := server.Recv(within(10*time.Second), sbuf)
	if err != nil {
		t.Fatalf("listener's receive: %v", err)
	}
	confSame(t, "message at the listener", []byte("ping"), sbuf[:n])
	for _, size := range c.Sizes {
		if err := server.Send(sf, confPayload(size)); err != nil {
			t.Fatalf("listener's message of %d bytes: %v", size, err)
		}
	}
	serverOpen = false
	if err := server.Close(); err != nil {
		t.Fatalf("closing the listening channel: %v", err)
	}
	for _, size := range c.Sizes {
		what := fmt.Sprintf("the listener's message of %d bytes", size)
		m, from, err := ch.Recv(within(30*time.Second), buf)
		if err != nil {
			t.Fatalf("receive of %s: %v", what, err)
		}
		if from.Src() != f.Dst() || from.Dst() != f.Src() {
			t.Fatalf("%s arrived on %v, the flow is %v", what, from, f)
		}
		confSame(t, what, confPayload(size), buf[:m])
	}
	confFlowEnds(t, c, ch, f, buf)
}

// confFlowEnds: after the peer went away, no message arrives on the client's flow, the flow
// event of the case comes (NextEvent), and a send fails with the case's error. A receive returns
// nothing once the flow is gone (it keeps the events for NextEvent).
func confFlowEnds(t *testing.T, c confCase, ch *Channel, f Flow, buf []byte) {
	t.Helper()
	if c.Event != "" {
		ev, err := ch.NextEvent(within(10 * time.Second))
		if err != nil {
			t.Fatalf("no %q event: %v", c.Event, err)
		}
		if ev.Kind.String() != c.Event || ev.Flow.Src() != f.Dst() || ev.Flow.Dst() != f.Src() {
			t.Fatalf("event %v; want %s on %v", ev, c.Event, f)
		}
		want := map[string]error{"reset": ErrFlowReset, "peer_closed": ErrPeerClosed}[c.Event]
		if want != nil && !errors.Is(ev.Err(), want) {
			t.Fatalf("event %v does not match %v", ev.Err(), want)
		}
		t.Logf("event: %v", ev)
	}
	n, _, err := ch.Recv(within(500*time.Millisecond), buf)
	switch {
	case n > 0:
		t.Fatalf("a %d-byte message arrived after the peer went away", n)
	case err != nil && !errors.Is(err, context.DeadlineExceeded):
		confWantError(t, "receive after the peer went away", c.Error, err)
	default:
		t.Logf("receive after the peer went away: nothing (%v)", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ch.Send(f, []byte{1})
		if err != nil {
			var e *Error
			if errors.As(err, &e) {
				t.Logf("send after the peer went away: %v (errno %d, %v, %s)", err, int(e.Errno), e.Errno, e.Code)
			}
			confWantError(t, "send after the peer went away", c.Error, err)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sends still succeed 10 s after the peer's channel was closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
