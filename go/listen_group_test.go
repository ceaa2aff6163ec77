package machnet

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// exchangeThroughGroup checks a listen group (docs/CHANNEL.md §2): every channel in members
// listens on port of this process's sidecar. n flows are connected from the peer sidecar, each
// carries one message; every message must reach exactly one member, which answers on the flow
// it accepted (the other members cannot send on it), and every answer must come back on its
// flow. Which member (engine) accepts which flow is not asserted: the sidecar's suite does that.
func exchangeThroughGroup(t *testing.T, members []*Channel, port uint16, n int) {
	t.Helper()
	peer, err := Open(os.Getenv("MACHNET_TEST_PEER_SOCK"))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	client, err := peer.Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	localIP := os.Getenv("MACHNET_TEST_LOCAL_IP")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	flows := make([]Flow, n)
	for i := range flows {
		if flows[i], err = client.Connect(ctx, "0.0.0.0", localIP, port); err != nil {
			t.Fatalf("connect %d of %d to the group: %v", i, n, err)
		}
		if err := client.Send(flows[i], []byte(fmt.Sprintf("flow %d", i))); err != nil {
			t.Fatal(err)
		}
	}

	// Each member answers what it receives on the flow it came on, until cancelled.
	serveCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, len(members))
	counts := make([]int, len(members))
	for m, ch := range members {
		wg.Add(1)
		go func(m int, ch *Channel) {
			defer wg.Done()
			buf := make([]byte, 64)
			for {
				k, from, err := ch.Recv(serveCtx, buf)
				if err != nil {
					if serveCtx.Err() == nil {
						errs <- fmt.Errorf("member %d: %v", m, err)
					}
					return
				}
				for o, other := range members {
					if o != m && other.Send(from, []byte("not mine")) == nil {
						errs <- fmt.Errorf("member %d could send on the flow member %d accepted", o, m)
						return
					}
				}
				counts[m]++
				if err := ch.Send(from, append([]byte("re: "), buf[:k]...)); err != nil {
					errs <- fmt.Errorf("member %d answering: %v", m, err)
					return
				}
			}
		}(m, ch)
	}

	answered := make([]bool, n)
	buf := make([]byte, 64)
	for got := 0; got < n; got++ {
		k, from, err := client.Recv(ctx, buf)
		if err != nil {
			stop()
			wg.Wait()
			close(errs)
			for e := range errs {
				t.Error(e)
			}
			t.Fatalf("after %d of %d answers: %v", got, n, err)
		}
		i := -1
		for j, f := range flows {
			if from.Src() == f.Dst() && from.Dst() == f.Src() {
				i = j
			}
		}
		if i < 0 || answered[i] || !bytes.Equal(buf[:k], []byte(fmt.Sprintf("re: flow %d", i))) {
			t.Fatalf("answer %q on %v: unknown flow, twice or altered", buf[:k], from)
		}
		answered[i] = true
	}
	stop()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if k, _, err := client.TryRecv(buf); k != 0 || err != nil {
		t.Fatalf("an extra message %q (%v)", buf[:k], err)
	}
	t.Logf("listen group of %d channels: flows accepted per channel %v", len(members), counts)
}
