package nettest

import (
	"context"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	machnet "github.com/machnet-rs/machnet-rs/go"
	"golang.org/x/net/nettest"
)

// pipes makes connected pairs: a Listener on the peer sidecar (MACHNET_TEST_PEER_SOCK at
// MACHNET_TEST_PEER_IP) and a Dialer on this process's (MACHNET_TEST_SOCK).
type pipes struct {
	l    *machnet.Listener
	d    *machnet.Dialer
	addr string
}

func newPipes(t *testing.T, port uint16, cfg machnet.StreamConfig) *pipes {
	sock, peerSock, peerIP := os.Getenv("MACHNET_TEST_SOCK"), os.Getenv("MACHNET_TEST_PEER_SOCK"), os.Getenv("MACHNET_TEST_PEER_IP")
	if sock == "" || peerSock == "" || peerIP == "" {
		t.Fatal("needs real sidecars: run ci/ffi.sh (MACHNET_TEST_SOCK, MACHNET_TEST_PEER_SOCK, MACHNET_TEST_PEER_IP)")
	}
	srv, err := machnet.Open(peerSock)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := machnet.Open(sock)
	if err != nil {
		t.Fatal(err)
	}
	l, err := srv.ListenConfig("0.0.0.0", port, cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := cli.NewDialer(cfg)
	t.Cleanup(func() { _ = l.Close(); _ = d.Close(); _ = srv.Close(); _ = cli.Close() })
	return &pipes{l: l, d: d, addr: net.JoinHostPort(peerIP, fmt.Sprint(port))}
}

func (p *pipes) make() (c1, c2 net.Conn, stop func(), err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c1, err = p.d.DialContext(ctx, "machnet", p.addr)
	if err != nil {
		return nil, nil, nil, err
	}
	c2, err = p.l.Accept()
	if err != nil {
		c1.Close()
		return nil, nil, nil, err
	}
	return c1, c2, func() { c1.Close(); c2.Close() }, nil
}

// TestConn: the x/net conformance suite, dialer side as c1.
func TestConn(t *testing.T) {
	p := newPipes(t, 7900, machnet.StreamConfig{})
	nettest.TestConn(t, p.make)
}

// TestConnDispatchInThread: the suite with dispatchers waiting inside the library.
func TestConnDispatchInThread(t *testing.T) {
	p := newPipes(t, 7902, machnet.StreamConfig{DispatchWait: machnet.WaitInThread})
	nettest.TestConn(t, p.make)
}

// TestConnReversed: the same with the accepted side as c1.
func TestConnReversed(t *testing.T) {
	p := newPipes(t, 7901, machnet.StreamConfig{})
	nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
		c1, c2, stop, err := p.make()
		return c2, c1, stop, err
	})
}
