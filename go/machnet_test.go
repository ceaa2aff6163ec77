package machnet

// Tests against real sidecars and `machnet-echo server`, as started by ci/ffi.sh:
//   MACHNET_TEST_SOCK       control socket of the sidecar this process attaches to (127.0.0.2)
//   MACHNET_TEST_PEER_SOCK  the other sidecar's (127.0.0.1), for a child-process server
//   MACHNET_TEST_PEER_IP, MACHNET_TEST_ECHO_PORT  where the echo server is

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	peerIP   string
	echoPort uint16
)

func TestMain(m *testing.M) {
	if os.Getenv("MACHNET_GO_CHILD") == "server" {
		os.Exit(childServer())
	}
	sock := os.Getenv("MACHNET_TEST_SOCK")
	if sock == "" || os.Getenv("MACHNET_TEST_PEER_SOCK") == "" {
		println("machnet tests need real sidecars: run ci/ffi.sh (MACHNET_TEST_SOCK is not set)")
		os.Exit(1)
	}
	peerIP = os.Getenv("MACHNET_TEST_PEER_IP")
	p, err := strconv.Atoi(os.Getenv("MACHNET_TEST_ECHO_PORT"))
	if peerIP == "" || err != nil {
		println("MACHNET_TEST_PEER_IP / MACHNET_TEST_ECHO_PORT missing")
		os.Exit(1)
	}
	echoPort = uint16(p)
	// Before Init: attaching fails with ErrNotInitialized.
	if _, err := Attach(); !errors.Is(err, ErrNotInitialized) {
		println("Attach before Init:", err)
		os.Exit(1)
	}
	if err := Init(sock); err != nil {
		println("Init:", err.Error())
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// childServer listens on the other sidecar and echoes messages reversed until stdin closes.
func childServer() int {
	if err := Init(os.Getenv("MACHNET_TEST_PEER_SOCK")); err != nil {
		println(err.Error())
		return 10
	}
	ch, err := Attach()
	if err != nil {
		return 11
	}
	port, _ := strconv.Atoi(os.Getenv("MACHNET_GO_CHILD_PORT"))
	if err := ch.Listen("0.0.0.0", uint16(port)); err != nil {
		println(err.Error())
		return 12
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _, _ = bufio.NewReader(os.Stdin).ReadByte(); cancel() }()
	os.Stdout.WriteString("READY\n")
	buf := make([]byte, 1<<16)
	for {
		n, f, err := ch.Recv(ctx, buf)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return 0
			}
			println(err.Error())
			return 13
		}
		for i, j := 0, n-1; i < j; i, j = i+1, j-1 {
			buf[i], buf[j] = buf[j], buf[i]
		}
		if err := ch.Send(f, buf[:n]); err != nil {
			return 14
		}
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) + seed + byte(i>>8)*7
	}
	return b
}

func connectEcho(t *testing.T) (*Channel, Flow) {
	t.Helper()
	ch, err := Attach()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := ch.Connect(ctx, "0.0.0.0", peerIP, echoPort)
	if err != nil {
		t.Fatal(err)
	}
	return ch, f
}

// eachWaitMode runs f as one subtest per WaitMode.
func eachWaitMode(t *testing.T, f func(t *testing.T, mode WaitMode)) {
	t.Run("netpoll", func(t *testing.T) { f(t, WaitNetpoll) })
	t.Run("thread", func(t *testing.T) { f(t, WaitInThread) })
}

func within(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	_ = cancel // released when the deadline passes
	return ctx
}

func TestInitErrors(t *testing.T) {
	// A failed Init leaves the current attachment in place.
	if err := Init("/nonexistent/machnet.sock"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("err %v", err)
	}
	ch, err := Attach()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestVersion(t *testing.T) {
	if v := Version(); len(v) < 10 || v[:10] != "machnet-rs" {
		t.Fatalf("version %q", v)
	}
}

func TestEchoEverySizeUpTo8MiB(t *testing.T) { eachWaitMode(t, echoEverySizeUpTo8MiB) }

func echoEverySizeUpTo8MiB(t *testing.T, mode WaitMode) {
	ch, f := connectEcho(t)
	ch.SetWaitMode(mode)
	buf := make([]byte, MaxMessageLen)
	for i, size := range []int{1, 64, 1000, 1500, 9000, 65536, 1 << 20, MaxMessageLen - 1, MaxMessageLen} {
		msg := pattern(size, byte(i))
		if err := ch.Send(f, msg); err != nil {
			t.Fatalf("send %d: %v", size, err)
		}
		n, from, err := ch.Recv(within(10*time.Second), buf)
		if err != nil {
			t.Fatalf("recv %d: %v", size, err)
		}
		if n != size || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("%d bytes sent, %d received or altered", size, n)
		}
		if from.Src() != f.Dst() || from.Dst() != f.Src() {
			t.Fatalf("received on %v, sent on %v", from, f)
		}
	}
}

func TestRecvHonoursDeadlineWithoutSpinning(t *testing.T) {
	eachWaitMode(t, recvHonoursDeadlineWithoutSpinning)
}

func recvHonoursDeadlineWithoutSpinning(t *testing.T, mode WaitMode) {
	ch, _ := connectEcho(t)
	ch.SetWaitMode(mode)
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	t0 := time.Now()
	_, _, err := ch.Recv(within(300*time.Millisecond), make([]byte, 10))
	dt := time.Since(t0)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	if dt < 250*time.Millisecond || dt > 3*time.Second {
		t.Fatalf("returned after %v", dt)
	}
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) * time.Nanosecond
	if cpu > 150*time.Millisecond { // a spinning wait would use ~300 ms
		t.Fatalf("waiting 300 ms used %v of CPU", cpu)
	}
}

func TestRecvHonoursCancellation(t *testing.T) { eachWaitMode(t, recvHonoursCancellation) }

func recvHonoursCancellation(t *testing.T, mode WaitMode) {
	ch, _ := connectEcho(t)
	ch.SetWaitMode(mode)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	t0 := time.Now()
	_, _, err := ch.Recv(ctx, make([]byte, 10))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if time.Since(t0) > 3*time.Second {
		t.Fatalf("cancellation took %v", time.Since(t0))
	}
	// Already cancelled: returns at once.
	if _, _, err := ch.Recv(ctx, make([]byte, 10)); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}

func TestCancellingOneRecvLeavesAnotherWaiting(t *testing.T) {
	eachWaitMode(t, cancellingOneRecvLeavesAnotherWaiting)
}

func cancellingOneRecvLeavesAnotherWaiting(t *testing.T, mode WaitMode) {
	ch, f := connectEcho(t)
	ch.SetWaitMode(mode)
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 100)
		n, _, err := ch.Recv(within(10*time.Second), buf)
		if err == nil && !bytes.Equal(buf[:n], []byte("still here")) {
			err = errors.New("wrong message")
		}
		got <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, _, err := ch.Recv(ctx, make([]byte, 100)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	if err := ch.Send(f, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

func TestTooSmallBufferKeepsTheMessage(t *testing.T) {
	ch, f := connectEcho(t)
	msg := pattern(5000, 3)
	if err := ch.Send(f, msg); err != nil {
		t.Fatal(err)
	}
	_, _, err := ch.Recv(within(10*time.Second), make([]byte, 100))
	var e *Error
	if !errors.Is(err, ErrMessageSize) || !errors.As(err, &e) || e.Needed != 5000 {
		t.Fatalf("err %v", err)
	}
	if n, err := ch.Peek(); n != 5000 || err != nil {
		t.Fatalf("peek %d %v", n, err)
	}
	buf := make([]byte, 5000)
	n, _, err := ch.TryRecv(buf)
	if err != nil || n != 5000 || !bytes.Equal(buf, msg) {
		t.Fatalf("n %d err %v", n, err)
	}
}

func TestConcurrentSendAndRecvOnOneChannel(t *testing.T) {
	eachWaitMode(t, concurrentSendAndRecvOnOneChannel)
}

func concurrentSendAndRecvOnOneChannel(t *testing.T, mode WaitMode) {
	ch, f := connectEcho(t)
	ch.SetWaitMode(mode)
	const count, size = 2000, 10000
	var wg sync.WaitGroup
	sendErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < count; i++ {
			if err := ch.Send(f, pattern(size, byte(i))); err != nil {
				sendErr <- err
				return
			}
		}
	}()
	buf := make([]byte, size)
	for i := 0; i < count; i++ {
		n, _, err := ch.Recv(within(10*time.Second), buf)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if n != size || !bytes.Equal(buf, pattern(size, byte(i))) {
			t.Fatalf("message %d altered or out of order", i)
		}
	}
	wg.Wait()
	select {
	case err := <-sendErr:
		t.Fatal(err)
	default:
	}
}

func TestManyGoroutinesEachWithAFlow(t *testing.T) {
	ch, err := Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	// Several goroutines share one channel, each with its own flow; receives are routed by
	// flow through a demultiplexer goroutine.
	const workers, rounds = 4, 50
	flows := make([]Flow, workers)
	inbox := map[Flow]chan []byte{}
	for i := range flows {
		f, err := ch.Connect(within(10*time.Second), "0.0.0.0", peerIP, echoPort)
		if err != nil {
			t.Fatal(err)
		}
		flows[i] = f
		inbox[Flow{f.DstIP, f.SrcIP, f.DstPort, f.SrcPort}] = make(chan []byte, rounds)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := ch.Recv(ctx, buf)
			if err != nil {
				return
			}
			inbox[from] <- append([]byte(nil), buf[:n]...)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			f := flows[w]
			in := inbox[Flow{f.DstIP, f.SrcIP, f.DstPort, f.SrcPort}]
			for r := 0; r < rounds; r++ {
				msg := pattern(100+w*10+r, byte(w))
				if err := ch.Send(f, msg); err != nil {
					errs <- err
					return
				}
				select {
				case got := <-in:
					if !bytes.Equal(got, msg) {
						errs <- errors.New("echo altered")
						return
					}
				case <-time.After(10 * time.Second):
					errs <- errors.New("no echo")
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestErrorsMatchWithErrorsIs(t *testing.T) {
	ch, f := connectEcho(t)
	if err := ch.Listen("not-an-ip", 1000); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("bad ip: %v", err)
	}
	if err := ch.Listen("10.255.255.1", 1000); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("foreign ip: %v", err)
	}
	if err := ch.Listen("0.0.0.0", 7300); err != nil {
		t.Fatal(err)
	}
	// The same channel twice: in use. Another channel of this process joins the port's listen
	// group (docs/CHANNEL.md §2); only another process would get ErrPortInUse.
	if err := ch.Listen("0.0.0.0", 7300); !errors.Is(err, ErrPortInUse) {
		t.Fatalf("port in use: %v", err)
	}
	other, err := Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Listen("0.0.0.0", 7300); err != nil {
		t.Fatalf("second channel of this process joins the group: %v", err)
	}
	// Flows from the peer sidecar are each accepted by one member of the group and exchange a
	// message with it.
	exchangeThroughGroup(t, []*Channel{ch, other}, 7300, 8)
	if err := ch.Send(f, nil); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("empty send: %v", err)
	}
	if err := ch.Send(Flow{1, 2, 3, 4}, []byte("x")); !errors.Is(err, ErrFlowClosed) {
		t.Fatalf("unknown flow: %v", err)
	}
	if _, err := ch.Connect(within(10*time.Second), "0.0.0.0", peerIP, 4444); !errors.Is(err, ErrRefused) && !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("refused: %v", err)
	}
	var e *Error
	if err := ch.Send(f, make([]byte, MaxMessageLen+1)); !errors.Is(err, ErrMessageSize) || !errors.As(err, &e) || e.Msg == "" {
		t.Fatalf("too large: %v", err)
	}
}

func TestCloseFlowAndChannel(t *testing.T) {
	ch, f := connectEcho(t)
	if err := ch.CloseFlow(f); err != nil {
		t.Fatal(err)
	}
	if err := ch.Send(f, []byte("x")); !errors.Is(err, ErrFlowClosed) {
		t.Fatalf("send after close: %v", err)
	}
	blocked := make(chan error, 1)
	go func() {
		_, _, err := ch.Recv(context.Background(), make([]byte, 10))
		blocked <- err
	}()
	time.Sleep(20 * time.Millisecond) // usually blocked by now; either way it must end with ErrClosed
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-blocked:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked recv: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Recv")
	}
	if err := ch.Send(f, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("send after Close: %v", err)
	}
	if err := ch.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
}

func TestAbortChannel(t *testing.T) {
	ch, f := connectEcho(t)
	if err := ch.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := ch.Send(f, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("send after Abort: %v", err)
	}
	if err := ch.Abort(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Abort: %v", err)
	}
	if err := ch.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Close after Abort: %v", err)
	}
}

func TestListenAndAcceptFromAnotherProcess(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const port = 7400
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "MACHNET_GO_CHILD=server", "MACHNET_GO_CHILD_PORT="+strconv.Itoa(port))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "READY\n" {
		t.Fatalf("child: %q %v", line, err)
	}
	ch, err := Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	f, err := ch.Connect(within(10*time.Second), "0.0.0.0", peerIP, port)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	for i := 1; i <= 5; i++ {
		msg := pattern(i*10, byte(i))
		if err := ch.Send(f, msg); err != nil {
			t.Fatal(err)
		}
		n, _, err := ch.Recv(within(10*time.Second), buf)
		if err != nil {
			t.Fatal(err)
		}
		for k := 0; k < n; k++ {
			if n != len(msg) || buf[k] != msg[n-1-k] {
				t.Fatalf("round %d: not the reversed message", i)
			}
		}
	}
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
}

// startDoomedSidecar starts a sidecar on 127.0.0.3 with its own control socket (MACHNET_TEST_BIN,
// MACHNET_TEST_UDP_BASE, MACHNET_TEST_DIR from ci/ffi.sh) and waits until it accepts attaches.
func startDoomedSidecar(t *testing.T, extraArgs ...string) (*exec.Cmd, string) {
	t.Helper()
	bin, base, dir := os.Getenv("MACHNET_TEST_BIN"), os.Getenv("MACHNET_TEST_UDP_BASE"), os.Getenv("MACHNET_TEST_DIR")
	if bin == "" || base == "" || dir == "" {
		t.Fatal("MACHNET_TEST_BIN, MACHNET_TEST_UDP_BASE and MACHNET_TEST_DIR are needed (ci/ffi.sh sets them)")
	}
	sock := dir + "/go-doomed-" + strconv.Itoa(os.Getpid()) + ".sock"
	cmd := exec.Command(bin, "--local-ip", "127.0.0.3", "--control-socket", sock,
		"--allow-user", strconv.Itoa(os.Getuid()), "--udp-port-base", base,
		"--udp-port-count", "8", "--stats-interval", "0")
	cmd.Args = append(cmd.Args, extraArgs...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); _ = os.Remove(sock) })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			return cmd, sock
		}
		if i == 400 {
			t.Fatal("the sidecar never created its control socket")
		}
		time.Sleep(25 * time.Millisecond) // waiting for a process to come up; nothing to wait on
	}
}

// Issue 14: once the sidecar process is dead, Send into a ring with room fails with
// ErrSidecarGone instead of returning nil and losing the message; so do Connect, Listen and
// CloseFlow. Nothing is received in between.
func TestEveryCallFailsWithErrSidecarGoneAfterTheSidecarDied(t *testing.T) {
	cmd, doomed := startDoomedSidecar(t)
	if err := Init(doomed); err != nil {
		t.Fatal(err)
	}
	ch, err := Attach()
	if err := Init(os.Getenv("MACHNET_TEST_SOCK")); err != nil { // later attaches: back to b
		t.Fatal(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	f, err := ch.Connect(within(10*time.Second), "0.0.0.0", peerIP, echoPort)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Send(f, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, _, err := ch.Recv(within(10*time.Second), buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("echo: %q %v", buf[:n], err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // reaped: the process is dead
	if err := ch.Send(f, []byte("lost?")); !errors.Is(err, ErrSidecarGone) {
		t.Fatalf("Send after the sidecar died: %v", err)
	}
	if _, err := ch.Connect(within(10*time.Second), "0.0.0.0", peerIP, echoPort); !errors.Is(err, ErrSidecarGone) {
		t.Fatalf("Connect after the sidecar died: %v", err)
	}
	if err := ch.Listen("0.0.0.0", 7700); !errors.Is(err, ErrSidecarGone) {
		t.Fatalf("Listen after the sidecar died: %v", err)
	}
	if err := ch.CloseFlow(f); !errors.Is(err, ErrSidecarGone) {
		t.Fatalf("CloseFlow after the sidecar died: %v", err)
	}
	if _, _, err := ch.Recv(within(10*time.Second), buf); !errors.Is(err, ErrSidecarGone) {
		t.Fatalf("Recv after the sidecar died: %v", err)
	}
}
