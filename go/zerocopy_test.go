package machnet

// Zero-copy send (Loan / Commit / Cancel) and receive (RecvZC / TryRecvZC / View.Release)
// against the echo server started by ci/ffi.sh.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// loanSend sends msg through a loan (loan, write, commit the whole of it).
func loanSend(ch *Channel, f Flow, msg []byte) error {
	l, err := ch.Loan(f, len(msg))
	if err != nil {
		return err
	}
	if got := len(l.Bytes()); got != len(msg) {
		_ = l.Cancel()
		return fmt.Errorf("loaned %d bytes, asked for %d", got, len(msg))
	}
	copy(l.Bytes(), msg)
	return l.Commit(len(msg))
}

// recvZCCheck borrows the next message and checks it is want on the reverse of f, then releases it.
func recvZCCheck(t *testing.T, ch *Channel, f Flow, want []byte) {
	t.Helper()
	from, v, err := ch.RecvZC(within(60 * time.Second))
	if err != nil {
		t.Fatalf("RecvZC (want %d bytes): %v", len(want), err)
	}
	if v.Len() != len(want) || !bytes.Equal(v.Bytes(), want) {
		_ = v.Release()
		t.Fatalf("%d bytes sent, %d received or altered", len(want), v.Len())
	}
	if from.Src() != f.Dst() || from.Dst() != f.Src() {
		t.Fatalf("received on %v, sent on %v", from, f)
	}
	if err := v.Release(); err != nil {
		t.Fatal(err)
	}
}

func TestZeroCopyEcho(t *testing.T) { eachWaitMode(t, zeroCopyEcho) }

// 1 B, 64 KiB and 8 MiB loaned and borrowed, byte-identical; then a window of messages in order.
func zeroCopyEcho(t *testing.T, mode WaitMode) {
	ch, f := connectEcho(t)
	ch.SetWaitMode(mode)
	for i, size := range []int{1, 64 << 10, MaxMessageLen} {
		msg := pattern(size, byte(i+1))
		if err := loanSend(ch, f, msg); err != nil {
			t.Fatalf("loan send %d: %v", size, err)
		}
		recvZCCheck(t, ch, f, msg)
	}
	const window = 16
	for i := 0; i < window; i++ {
		if err := loanSend(ch, f, pattern(4096+i, byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < window; i++ {
		recvZCCheck(t, ch, f, pattern(4096+i, byte(i)))
	}
	if _, v, err := ch.TryRecvZC(); v != nil || err != nil {
		t.Fatalf("a message nobody sent: %v %v", v, err)
	}
}

func TestLoanCancelAndPartialCommit(t *testing.T) {
	ch, f := connectEcho(t)
	buf := make([]byte, 256)
	expectEcho := func(want string) {
		t.Helper()
		n, _, err := ch.Recv(within(10*time.Second), buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("echo %q, want %q (%v)", buf[:n], want, err)
		}
	}

	// A loan cancelled (never committed): nothing goes out, the next send works.
	l, err := ch.Loan(f, 100)
	if err != nil {
		t.Fatal(err)
	}
	copy(l.Bytes(), bytes.Repeat([]byte("X"), 100))
	if err := l.Cancel(); err != nil {
		t.Fatal(err)
	}
	if l.Bytes() != nil {
		t.Fatal("Bytes after Cancel")
	}
	if err := l.Cancel(); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("second Cancel: %v", err)
	}
	if err := l.Commit(1); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Commit after Cancel: %v", err)
	}
	if err := ch.Send(f, []byte("after cancel")); err != nil {
		t.Fatal(err)
	}
	expectEcho("after cancel") // the cancelled message would have come first

	// Commit of a part: only those bytes arrive.
	if l, err = ch.Loan(f, 200); err != nil {
		t.Fatal(err)
	}
	copy(l.Bytes(), "partial")
	copy(l.Bytes()[7:], bytes.Repeat([]byte("Z"), 193))
	if err := l.Commit(7); err != nil {
		t.Fatal(err)
	}
	if err := l.Commit(7); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("second Commit: %v", err)
	}
	expectEcho("partial")

	// Commit lengths out of range: EINVAL, nothing sent, the loan is over.
	for _, bad := range []int{0, -1, 17} {
		if l, err = ch.TryLoan(f, 16); err != nil {
			t.Fatal(err)
		}
		copy(l.Bytes(), "BADBADBADBADBADB")
		var e *Error
		if err := l.Commit(bad); !errors.Is(err, syscall.EINVAL) || !errors.As(err, &e) || e.Code != "ERR_MACHNET_INVALID_ARGUMENT" {
			t.Fatalf("Commit(%d) of 16: %v", bad, err)
		}
		if err := l.Cancel(); !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("Cancel after a failed Commit: %v", err)
		}
	}
	if err := ch.Send(f, []byte("next")); err != nil {
		t.Fatal(err)
	}
	expectEcho("next")

	// Argument checks.
	if _, err := ch.Loan(f, 0); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("loan of 0: %v", err)
	}
	if _, err := ch.Loan(f, MaxMessageLen+1); !errors.Is(err, ErrMessageSize) {
		t.Fatalf("loan too large: %v", err)
	}
	if _, err := ch.Loan(Flow{1, 2, 3, 4}, 8); !errors.Is(err, ErrFlowClosed) {
		t.Fatalf("loan on an unknown flow: %v", err)
	}
}

// The goroutine holding a loan gets EBUSY from its own Send and Loan (it is wired to its OS
// thread); another goroutine's Send waits and goes out after the loaned message.
func TestLoanHoldsBackOtherGoroutines(t *testing.T) {
	ch, f := connectEcho(t)
	l, err := ch.Loan(f, 5)
	if err != nil {
		t.Fatal(err)
	}
	var e *Error
	if err := ch.Send(f, []byte("x")); !errors.Is(err, syscall.EBUSY) || !errors.As(err, &e) || e.Code != "ERR_MACHNET_WOULD_BLOCK" {
		t.Fatalf("Send by the holder: %v", err)
	}
	if _, err := ch.TryLoan(f, 5); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("TryLoan by the holder: %v", err)
	}
	if _, err := ch.Loan(f, 5); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("Loan by the holder: %v", err)
	}
	sent := make(chan error, 1)
	go func() { sent <- ch.Send(f, []byte("second")) }()
	copy(l.Bytes(), "first")
	if err := l.Commit(5); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("the other goroutine's send: %v", err)
	}
	buf := make([]byte, 16)
	for _, want := range []string{"first", "second"} {
		n, _, err := ch.Recv(within(10*time.Second), buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("echo %q, want %q (%v)", buf[:n], want, err)
		}
	}
}

// Many goroutines loaning on one channel, yielding while they hold the loan (so the scheduler
// would run others on the holder's OS thread, were it not wired to it): every loan waits its
// turn (never a spurious EBUSY), every message arrives once.
func TestLoansFromManyGoroutines(t *testing.T) {
	ch, f := connectEcho(t)
	const workers, each = 6, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				msg := []byte(fmt.Sprintf("w%d-%03d", w, i))
				l, err := ch.Loan(f, len(msg))
				if err == nil {
					runtime.Gosched()
					copy(l.Bytes(), msg)
					err = l.Commit(len(msg))
				}
				if err != nil {
					errs <- fmt.Errorf("worker %d message %d: %w", w, i, err)
					return
				}
			}
		}(w)
	}
	got := map[string]bool{}
	buf := make([]byte, 64)
	for len(got) < workers*each {
		n, _, err := ch.Recv(within(20*time.Second), buf)
		if err != nil {
			select {
			case e := <-errs:
				t.Fatal(e)
			default:
			}
			t.Fatalf("after %d echoes: %v", len(got), err)
		}
		if got[string(buf[:n])] {
			t.Fatalf("%q twice", buf[:n])
		}
		got[string(buf[:n])] = true
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestViewRules(t *testing.T) { eachWaitMode(t, viewRules) }

// Release twice is an error (no crash); Bytes is nil afterwards; a second zero-copy receive by
// the holder is EBUSY; copying receives go on meanwhile.
func viewRules(t *testing.T, mode WaitMode) {
	ch, f := connectEcho(t)
	ch.SetWaitMode(mode)
	for _, m := range []string{"one", "two", "three"} {
		if err := ch.Send(f, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	_, v, err := ch.RecvZC(within(10 * time.Second))
	if err != nil || string(v.Bytes()) != "one" {
		t.Fatalf("RecvZC: %v", err)
	}
	if _, v2, err := ch.TryRecvZC(); v2 != nil || !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("TryRecvZC while a view is out: %v", err)
	}
	if _, v2, err := ch.RecvZC(within(10 * time.Second)); v2 != nil || !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("RecvZC by the holder: %v", err)
	}
	buf := make([]byte, 16)
	n, _, err := ch.Recv(within(10*time.Second), buf)
	if err != nil || string(buf[:n]) != "two" {
		t.Fatalf("copying Recv while a view is out: %q %v", buf[:n], err)
	}
	if string(v.Bytes()) != "one" {
		t.Fatal("the view changed under a copying receive")
	}
	if err := v.Release(); err != nil {
		t.Fatal(err)
	}
	if v.Bytes() != nil || v.Len() != 3 {
		t.Fatal("Bytes after Release")
	}
	for i := 0; i < 2; i++ {
		var e *Error
		if err := v.Release(); !errors.Is(err, syscall.EINVAL) || !errors.As(err, &e) || e.Code != "ERR_MACHNET_INVALID_ARGUMENT" {
			t.Fatalf("Release again: %v", err)
		}
	}
	_, v, err = ch.RecvZC(within(10 * time.Second))
	if err != nil || string(v.Bytes()) != "three" {
		t.Fatalf("RecvZC after the release: %v", err)
	}
	// A view still out when the channel closes: its release fails cleanly.
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	if err := v.Release(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Release after Close: %v", err)
	}
}

func TestRecvZCWaitsForAnotherGoroutinesRelease(t *testing.T) {
	eachWaitMode(t, recvZCWaitsForAnotherGoroutinesRelease)
}

func recvZCWaitsForAnotherGoroutinesRelease(t *testing.T, mode WaitMode) {
	ch, f := connectEcho(t)
	ch.SetWaitMode(mode)
	for _, m := range []string{"first", "second"} {
		if err := ch.Send(f, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	_, v, err := ch.RecvZC(within(10 * time.Second))
	if err != nil || string(v.Bytes()) != "first" {
		t.Fatalf("RecvZC: %v", err)
	}
	type result struct {
		data string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		_, v2, err := ch.RecvZC(within(10 * time.Second))
		if err != nil {
			res <- result{err: err}
			return
		}
		r := result{data: string(v2.Bytes())}
		r.err = v2.Release()
		res <- r
	}()
	// The other goroutine cannot get a view before this one is released.
	select {
	case r := <-res:
		t.Fatalf("a second view while one is out: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
	if err := v.Release(); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil || r.data != "second" {
		t.Fatalf("the waiting goroutine got %+v", r)
	}
	// And a RecvZC waiting for a release honours its ctx.
	if err := ch.Send(f, []byte("third")); err != nil {
		t.Fatal(err)
	}
	if _, v, err = ch.RecvZC(within(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, _, err := ch.RecvZC(ctx)
		res <- result{err: err}
	}()
	if r := <-res; !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("RecvZC waiting for a release past its deadline: %v", r.err)
	}
	if err := v.Release(); err != nil {
		t.Fatal(err)
	}
}

// A loan committed and a view released by another goroutine than the one that took them: both
// end (the taker stays wired to its OS thread, which is harmless) and the taker goes on.
func TestLoanAndViewEndedByAnotherGoroutine(t *testing.T) {
	ch, f := connectEcho(t)
	l, err := ch.Loan(f, 6)
	if err != nil {
		t.Fatal(err)
	}
	copy(l.Bytes(), "handed")
	done := make(chan error)
	go func() { done <- l.Commit(6) }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := ch.Send(f, []byte("after")); err != nil {
		t.Fatalf("Send by the taker after another goroutine committed: %v", err)
	}
	_, v, err := ch.RecvZC(within(10 * time.Second))
	if err != nil || string(v.Bytes()) != "handed" {
		t.Fatalf("RecvZC: %v", err)
	}
	go func() { done <- v.Release() }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	recvZCCheck(t, ch, f, []byte("after"))
}
