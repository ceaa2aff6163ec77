package machnet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// streamSides opens the two sidecars of the test run: the listener side (the peer sidecar,
// MACHNET_TEST_PEER_SOCK at MACHNET_TEST_PEER_IP) and the dialing side (MACHNET_TEST_SOCK).
func streamSides(t testing.TB, port uint16, cfg StreamConfig) (*Listener, *Dialer, string) {
	t.Helper()
	srv, err := Open(os.Getenv("MACHNET_TEST_PEER_SOCK"))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := Open(os.Getenv("MACHNET_TEST_SOCK"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := srv.ListenConfig("0.0.0.0", port, cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := cli.NewDialer(cfg)
	t.Cleanup(func() {
		_ = l.Close()
		_ = d.Close()
		_ = srv.Close()
		_ = cli.Close()
	})
	return l, d, net.JoinHostPort(peerIP, fmt.Sprint(port))
}

// connPair dials one flow and accepts it: (client side, server side).
func connPair(t *testing.T, l *Listener, d *Dialer, addr string) (*Conn, *Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "machnet", addr)
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(); _ = s.Close() })
	return c.(*Conn), s.(*Conn)
}

func readAllTimeout(t *testing.T, c net.Conn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

func TestConnAddrs(t *testing.T) {
	l, d, addr := streamSides(t, 7800, StreamConfig{})
	c, s := connPair(t, l, d, addr)
	if c.LocalAddr().Network() != "machnet" || s.RemoteAddr().Network() != "machnet" ||
		l.Addr().Network() != "machnet" {
		t.Fatal("Network() is not machnet")
	}
	if c.RemoteAddr().String() != addr || s.LocalAddr().String() != addr {
		t.Fatalf("addresses: client remote %v, server local %v, want %s", c.RemoteAddr(), s.LocalAddr(), addr)
	}
	if c.LocalAddr().String() != s.RemoteAddr().String() {
		t.Fatalf("client local %v != server's remote %v", c.LocalAddr(), s.RemoteAddr())
	}
}

// The client half-closes, the server reads EOF and still answers, then half-closes itself;
// then the other way round on a second flow.
func TestConnHalfCloseBothWays(t *testing.T) {
	l, d, addr := streamSides(t, 7801, StreamConfig{})
	for _, clientFirst := range []bool{true, false} {
		c, s := connPair(t, l, d, addr)
		first, second := net.Conn(c), net.Conn(s)
		if !clientFirst {
			first, second = s, c
		}
		if _, err := first.Write([]byte("question")); err != nil {
			t.Fatal(err)
		}
		if err := first.(*Conn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if got := readAllTimeout(t, second); string(got) != "question" {
			t.Fatalf("got %q", got)
		}
		if _, err := first.Write([]byte("x")); err == nil {
			t.Fatal("Write after CloseWrite succeeded")
		}
		// The side that read EOF may still write, and many times.
		for i := 0; i < 3; i++ {
			if _, err := second.Write([]byte("answer")); err != nil {
				t.Fatalf("write after the peer's CloseWrite: %v", err)
			}
		}
		if err := second.(*Conn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if got := readAllTimeout(t, first); string(got) != "answeransweranswer" {
			t.Fatalf("got %q", got)
		}
	}
}

// A peer's abort is a reset error (syscall.ECONNRESET) for Read and, soon, Write.
func TestConnPeerReset(t *testing.T) {
	l, d, addr := streamSides(t, 7802, StreamConfig{})
	c, s := connPair(t, l, d, addr)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(s, buf); err != nil {
		t.Fatal(err)
	}
	if err := s.Abort(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := c.Read(buf)
	if !errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) {
		t.Fatalf("Read after the peer's abort: %v, want ECONNRESET", err)
	}
	if _, err := c.Write([]byte("more")); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Write after the reset: %v, want ECONNRESET", err)
	}
}

// Deadlines and Close from another goroutine (nettest.TestConn covers them in depth).
func TestConnDeadlineAndClose(t *testing.T) {
	l, d, addr := streamSides(t, 7803, StreamConfig{})
	c, _ := connPair(t, l, d, addr)
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline: %v", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	done := make(chan error)
	go func() {
		_, err := c.Read(make([]byte, 1))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	_ = c.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read blocked over Close: %v, want net.ErrClosed", err)
	}
}

// 20 MiB of seeded random bytes in one Write come back byte-identical through a server that
// echoes with io.Copy (many messages each way, reassembled in order).
func TestConnLargeWriteEcho(t *testing.T) {
	l, d, addr := streamSides(t, 7804, StreamConfig{})
	c, s := connPair(t, l, d, addr)
	seed := time.Now().UnixNano()
	data := make([]byte, 20<<20)
	rand.New(rand.NewSource(seed)).Read(data)
	go func() {
		_, _ = io.Copy(s, s)
		_ = s.CloseWrite()
	}()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got := readAllTimeout(t, c)
	if err := <-werr; err != nil {
		t.Fatalf("seed %d: write: %v", seed, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("seed %d: echoed %d bytes differ from the %d written", seed, len(got), len(data))
	}
}

// A Conn nobody reads does not hold up the channel's other Conns forever: after StallTimeout
// it is reset (ErrReadStalled) and the others go on.
func TestConnStalledReaderIsReset(t *testing.T) {
	cfg := StreamConfig{ReadBuffer: 64 << 10, StallTimeout: 300 * time.Millisecond, MaxWriteMessage: 16 << 10}
	l, d, addr := streamSides(t, 7805, cfg)
	c1, s1 := connPair(t, l, d, addr) // s1 is not read until it was reset
	c2, s2 := connPair(t, l, d, addr)
	werr := make(chan error, 1)
	// Write until the reset: the sidecars may hold far more than any fixed size (their memory
	// budget is shared fairly between flows), so a fixed-size write could finish first.
	go func() {
		chunk := make([]byte, 1<<20)
		_ = c1.SetWriteDeadline(time.Now().Add(30 * time.Second))
		for {
			if _, err := c1.Write(chunk); err != nil {
				werr <- err
				return
			}
		}
	}()
	payload := bytes.Repeat([]byte("z"), 1<<20)
	go func() { _, _ = c2.Write(payload); _ = c2.CloseWrite() }()
	if got := readAllTimeout(t, s2); !bytes.Equal(got, payload) {
		t.Fatalf("the other conn got %d bytes, want %d", len(got), len(payload))
	}
	if err := <-werr; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("writer to the stalled conn: %v, want ECONNRESET", err)
	}
	_ = s1.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.Copy(io.Discard, s1)
	if !errors.Is(err, ErrReadStalled) {
		t.Fatalf("stalled conn: %v, want ErrReadStalled", err)
	}
}

// ----- net/http over Machnet -----

type httpFixture struct {
	client   *http.Client
	d        *Dialer
	addr     string
	newConns chan struct{}
	aborted  chan error // a handler whose client went away
}

func startHTTP(t *testing.T, port uint16) *httpFixture {
	t.Helper()
	l, d, addr := streamSides(t, port, StreamConfig{})
	f := &httpFixture{d: d, addr: addr, newConns: make(chan struct{}, 1000), aborted: make(chan error, 4)}
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Query().Get("n"))
	})
	mux.HandleFunc("/sum", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("s"), 64<<10)
		for i := 0; i < 4096; i++ { // 256 MiB: the client leaves long before
			if _, err := w.Write(chunk); err != nil {
				f.aborted <- err
				return
			}
			w.(http.Flusher).Flush()
		}
		f.aborted <- nil
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				f.newConns <- struct{}{}
			}
		}}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 1}
	t.Cleanup(tr.CloseIdleConnections)
	f.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return f
}

func (f *httpFixture) get(t *testing.T, path string) string {
	t.Helper()
	r, err := f.client.Get("http://" + f.addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil || r.StatusCode != 200 {
		t.Fatalf("GET %s: %d %q %v", path, r.StatusCode, b, err)
	}
	return string(b)
}

// Keep-alive: many requests on one Machnet flow.
func TestHTTPKeepAlive(t *testing.T) {
	f := startHTTP(t, 7810)
	for i := 0; i < 200; i++ {
		if got := f.get(t, fmt.Sprintf("/hello?n=%d", i)); got != fmt.Sprintf("hello %d", i) {
			t.Fatalf("request %d: %q", i, got)
		}
	}
	if n := len(f.newConns); n != 1 {
		t.Fatalf("200 keep-alive requests used %d connections, want 1", n)
	}
}

// A request body of several Machnet messages (3 MiB + 7 bytes, seeded) arrives whole.
func TestHTTPLargeRequestBody(t *testing.T) {
	f := startHTTP(t, 7811)
	seed := time.Now().UnixNano()
	body := make([]byte, 3<<20+7)
	rand.New(rand.NewSource(seed)).Read(body)
	r, err := f.client.Post("http://"+f.addr+"/sum", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r.Body)
	r.Body.Close()
	sum := sha256.Sum256(body)
	if want := fmt.Sprintf("%d %s", len(body), hex.EncodeToString(sum[:])); string(got) != want {
		t.Fatalf("seed %d: server saw %q, want %q", seed, got, want)
	}
}

// Pipelining: two requests in one write, two responses in order.
func TestHTTPPipelining(t *testing.T) {
	f := startHTTP(t, 7812)
	c, err := f.d.DialContext(context.Background(), "tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET /hello?n=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /hello?n=2 HTTP/1.1\r\nHost: x\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	for i := 1; i <= 2; i++ {
		r, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if string(b) != fmt.Sprintf("hello %d", i) {
			t.Fatalf("response %d: %q", i, b)
		}
	}
}

// A client that goes away mid-response: the handler's writes fail, and the server serves the
// next client.
func TestHTTPClientDisconnectsMidResponse(t *testing.T) {
	f := startHTTP(t, 7813)
	for _, abort := range []bool{false, true} {
		c, err := f.d.DialContext(context.Background(), "tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 256<<10)); err != nil {
			t.Fatal(err)
		}
		if abort {
			_ = c.(*Conn).Abort()
		} else {
			_ = c.Close()
		}
		select {
		case err := <-f.aborted:
			if err == nil {
				t.Fatal("the handler wrote 256 MiB to a client that left")
			}
		case <-time.After(60 * time.Second):
			t.Fatal("the handler never noticed the client left")
		}
		if got := f.get(t, "/hello?n=next"); got != "hello next" {
			t.Fatalf("next client: %q", got)
		}
	}
}

// Malformed HTTP gets a 400 and the server keeps serving others.
func TestHTTPMalformedRequest(t *testing.T) {
	f := startHTTP(t, 7814)
	for _, bad := range []string{"GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"} {
		c, err := f.d.DialContext(context.Background(), "tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(bad)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		_ = c.Close()
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 400") {
			t.Fatalf("malformed request %q: %q %v", bad, line, err)
		}
		if got := f.get(t, "/hello?n=ok"); got != "hello ok" {
			t.Fatalf("after a malformed request: %q", got)
		}
	}
}

// Many goroutines' requests at once over a few conns.
func TestHTTPConcurrentRequests(t *testing.T) {
	f := startHTTP(t, 7815)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				r, err := f.client.Get(fmt.Sprintf("http://%s/hello?n=%d-%d", f.addr, g, i))
				if err != nil {
					errs <- err
					return
				}
				b, _ := io.ReadAll(r.Body)
				r.Body.Close()
				if string(b) != fmt.Sprintf("hello %d-%d", g, i) {
					errs <- fmt.Errorf("got %q", b)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// The dialing side's sidecar dies: a blocked Read and later Writes fail (ErrSidecarGone, which
// matches syscall.ECONNRESET) instead of hanging; a new dial fails too.
func TestConnSidecarGone(t *testing.T) {
	cmd, doomed := startDoomedSidecar(t)
	srv, err := Open(os.Getenv("MACHNET_TEST_PEER_SOCK"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := Open(doomed)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	l, err := srv.Listen("0.0.0.0", 7806)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := cli.NewDialer(StreamConfig{})
	defer d.Close()
	c, s := connPair(t, l, d, net.JoinHostPort(peerIP, "7806"))
	_ = s
	rerr := make(chan error, 1)
	go func() {
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		_, err := c.Read(make([]byte, 16))
		rerr <- err
	}()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if err := <-rerr; !errors.Is(err, ErrSidecarGone) || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Read when the sidecar died: %v, want ErrSidecarGone", err)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("Write after the sidecar died succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.DialContext(ctx, "machnet", net.JoinHostPort(peerIP, "7806")); err == nil {
		t.Fatal("Dial after the sidecar died succeeded")
	}
}

// Read into an empty buffer returns at once, as on a TCP socket.
func TestConnZeroLengthRead(t *testing.T) {
	l, d, addr := streamSides(t, 7807, StreamConfig{})
	c, _ := connPair(t, l, d, addr)
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v", n, err)
	}
}

// A Listener on a two-engine sidecar listens on two channels (a listen group) and serves flows
// from both.
func TestListenerListensOnEveryEngine(t *testing.T) {
	_, sock := startDoomedSidecar(t, "--engines", "2")
	srv, err := Open(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if n, err := srv.Engines(); n != 2 || err != nil {
		t.Fatalf("Engines() = %d, %v", n, err)
	}
	l, err := srv.Listen("0.0.0.0", 7808)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Channels() != 2 {
		t.Fatalf("the listener has %d channels, want 2", l.Channels())
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	cli, err := Open(os.Getenv("MACHNET_TEST_SOCK"))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	d := cli.NewDialer(StreamConfig{})
	defer d.Close()
	for i := 0; i < 16; i++ {
		c, err := d.DialContext(context.Background(), "machnet", "127.0.0.3:7808")
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("flow %d", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = c.(*Conn).CloseWrite()
		if got := readAllTimeout(t, c); string(got) != msg {
			t.Fatalf("flow %d: echo %q", i, got)
		}
		_ = c.Close()
	}
}

// BenchmarkConnPingPong: a 64 B write and its echo (window 1) over a Machnet Conn pair and over
// a kernel TCP pair, same process (go test -run '^$' -bench ConnPingPong, sidecars as for the
// tests). ns/op is the round-trip time.
func BenchmarkConnPingPong(b *testing.B) {
	pingPong := func(b *testing.B, c, s net.Conn) {
		go func() { _, _ = io.Copy(s, s) }()
		buf := make([]byte, 64)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	machnetPair := func(b *testing.B, port uint16, cfg StreamConfig) {
		l, d, addr := streamSides(b, port, cfg)
		c, err := d.DialContext(context.Background(), "machnet", addr)
		if err != nil {
			b.Fatal(err)
		}
		s, err := l.Accept()
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		defer s.Close()
		pingPong(b, c, s)
	}
	b.Run("machnet", func(b *testing.B) { machnetPair(b, 7809, StreamConfig{}) })
	b.Run("machnet-inthread", func(b *testing.B) {
		machnetPair(b, 7890, StreamConfig{DispatchWait: WaitInThread})
	})
	b.Run("tcp", func(b *testing.B) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, err := l.Accept()
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		defer s.Close()
		pingPong(b, c, s)
	})
}
