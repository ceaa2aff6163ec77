package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"testing"
	"time"

	"github.com/machnet-rs/machnet-rs/examples/grpc-go/echo"
	machnet "github.com/machnet-rs/machnet-rs/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type done struct {
	method string
	err    error
}

// setup serves the echo service on the peer sidecar (MACHNET_TEST_PEER_SOCK, at
// MACHNET_TEST_PEER_IP) on `port` and returns a client through this process's sidecar
// (MACHNET_TEST_SOCK), and what the handlers report when their calls end.
func setup(t *testing.T, port uint16) (*echo.Client, chan done) {
	t.Helper()
	sock, peerSock, peerIP := os.Getenv("MACHNET_TEST_SOCK"), os.Getenv("MACHNET_TEST_PEER_SOCK"), os.Getenv("MACHNET_TEST_PEER_IP")
	if sock == "" || peerSock == "" || peerIP == "" {
		t.Fatal("needs real sidecars: run ci/grpc-go.sh (MACHNET_TEST_SOCK, MACHNET_TEST_PEER_SOCK, MACHNET_TEST_PEER_IP)")
	}
	srv, err := machnet.Open(peerSock)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := machnet.Open(sock)
	if err != nil {
		t.Fatal(err)
	}
	l, err := srv.Listen("0.0.0.0", port)
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan done, 16)
	s := serve(l, &echo.Service{OnDone: func(m string, err error) { ended <- done{m, err} }})
	d := cli.NewDialer(machnet.StreamConfig{})
	cc, err := dialMachnet(d, net.JoinHostPort(peerIP, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cc.Close()
		s.Stop()
		_ = d.Close()
		_ = srv.Close()
		_ = cli.Close()
	})
	return echo.NewClient(cc), ended
}

func ctx10s() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func TestUnary(t *testing.T) {
	c, _ := setup(t, 8100)
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < 200; i++ {
		p := make([]byte, 1+rng.Intn(8192))
		rng.Read(p)
		ctx, cancel := ctx10s()
		out, err := c.Unary(ctx, &echo.Msg{Value: p})
		cancel()
		if err != nil {
			t.Fatalf("seed %d call %d: %v", seed, i, err)
		}
		if !bytes.Equal(out.Value, p) {
			t.Fatalf("seed %d call %d: echo differs", seed, i)
		}
	}
}

// A bidirectional stream: 1,000 messages come back in order; the client's close ends it.
func TestStreamInOrder(t *testing.T) {
	c, ended := setup(t, 8101)
	ctx, cancel := ctx10s()
	defer cancel()
	st, err := c.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	go func() {
		for i := 0; i < n; i++ {
			if err := st.Send(&echo.Msg{Value: []byte(fmt.Sprint(i))}); err != nil {
				return
			}
		}
		_ = st.CloseSend()
	}()
	for i := 0; i < n; i++ {
		m, err := st.Recv()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if string(m.Value) != fmt.Sprint(i) {
			t.Fatalf("message %d came back as %q", i, m.Value)
		}
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last message: %v, want io.EOF", err)
	}
	if d := <-ended; d.method != "Stream" || d.err != nil {
		t.Fatalf("server: %+v, want a clean end", d)
	}
}

// The client's deadline crosses Machnet (grpc-timeout): the client gets DeadlineExceeded and
// the server's handler sees its own context end.
func TestDeadlineExceeded(t *testing.T) {
	c, ended := setup(t, 8102)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := c.Unary(ctx, &echo.Msg{Value: []byte("sleep")})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	select {
	case d := <-ended:
		if d.method != "Unary" || d.err == nil {
			t.Fatalf("server: %+v, want its context ended", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the server handler never saw the deadline")
	}
}

// Cancelling a call on the client reaches the server handler (RST_STREAM over Machnet).
func TestCancellationReachesServer(t *testing.T) {
	c, ended := setup(t, 8103)
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&echo.Msg{Value: []byte("one")}); err != nil {
		t.Fatal(err)
	}
	if m, err := st.Recv(); err != nil || string(m.Value) != "one" {
		t.Fatalf("%v %v", m, err)
	}
	cancel()
	select {
	case d := <-ended:
		if d.method != "Stream" || !errors.Is(d.err, context.Canceled) {
			t.Fatalf("server: %+v, want context.Canceled", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the server handler never saw the cancellation")
	}
	if _, err := st.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("client after cancel: %v", err)
	}
	// The connection still serves calls.
	ctx2, cancel2 := ctx10s()
	defer cancel2()
	if _, err := c.Unary(ctx2, &echo.Msg{Value: []byte("after")}); err != nil {
		t.Fatal(err)
	}
}

// A 5 MiB message each way (many Machnet messages, many HTTP/2 frames).
func TestFiveMiBMessage(t *testing.T) {
	c, _ := setup(t, 8104)
	seed := time.Now().UnixNano()
	p := make([]byte, 5<<20)
	rand.New(rand.NewSource(seed)).Read(p)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := c.Unary(ctx, &echo.Msg{Value: p})
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	if !bytes.Equal(out.Value, p) {
		t.Fatalf("seed %d: the 5 MiB echo differs", seed)
	}
}
