// machnet-echo-go is the Go twin of `machnet-echo client`: it keeps WINDOW messages outstanding
// on one flow to an echo server (`machnet-echo server`), verifies every echo byte for byte and
// reports the rate and RTT percentiles (same JSON fields as the Rust tool, mode "machnet-go").
//
//	machnet-echo-go --socket /run/machnet/machnet.sock --remote 10.0.0.1 --port 888 \
//	    --size 64 --window 1 --duration 10 --warmup 1 [--wait netpoll|thread] [--json]
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	machnet "github.com/machnet-rs/machnet-rs/go"
)

func main() {
	socket := flag.String("socket", "", "sidecar control socket (default: $MACHNET_SOCKET or /run/machnet/machnet.sock)")
	remote := flag.String("remote", "", "the echo server's IPv4 address (its sidecar's)")
	port := flag.Uint("port", 888, "the echo server's Machnet port")
	size := flag.Int("size", 64, "message size in bytes")
	window := flag.Int("window", 1, "messages outstanding")
	duration := flag.Float64("duration", 10, "measured seconds (after the warm-up)")
	warmup := flag.Float64("warmup", 1, "seconds of traffic before measuring")
	asJSON := flag.Bool("json", false, "print the report as one JSON object")
	wait := flag.String("wait", "netpoll", "how Recv waits: netpoll (Go's netpoller) or thread (in the library, on its OS thread)")
	flag.Parse()
	modes := map[string]machnet.WaitMode{"netpoll": machnet.WaitNetpoll, "thread": machnet.WaitInThread}
	mode, ok := modes[*wait]
	if !ok {
		fmt.Fprintln(os.Stderr, "machnet-echo-go: --wait must be netpoll or thread")
		os.Exit(2)
	}
	if err := run(*socket, *remote, uint16(*port), *size, *window, *duration, *warmup, *asJSON, mode); err != nil {
		fmt.Fprintln(os.Stderr, "machnet-echo-go:", err)
		os.Exit(1)
	}
}

type sent struct {
	seq uint64
	at  time.Time
}

func run(socket, remote string, port uint16, size, window int, duration, warmup float64, asJSON bool, mode machnet.WaitMode) error {
	if remote == "" || port == 0 {
		return fmt.Errorf("--remote and --port are required")
	}
	if size < 1 || size > machnet.MaxMessageLen || window < 1 || duration < 0 || warmup < 0 {
		return fmt.Errorf("--size must be 1..%d, --window at least 1, durations non-negative", machnet.MaxMessageLen)
	}
	if err := machnet.Init(socket); err != nil {
		return err
	}
	ch, err := machnet.Attach()
	if err != nil {
		return err
	}
	defer ch.Close()
	ch.SetWaitMode(mode)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	flow, err := ch.Connect(ctx, "0.0.0.0", remote, port)
	cancel()
	if err != nil {
		return err
	}
	// A fixed pseudo-random template; the first 8 bytes carry the sequence number.
	template := make([]byte, size)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range template {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		template[i] = byte(x)
	}
	stamp := func(buf []byte, seq uint64) {
		copy(buf, template)
		var s [8]byte
		binary.LittleEndian.PutUint64(s[:], seq)
		copy(buf, s[:])
	}
	sbuf, want, rbuf := make([]byte, size), make([]byte, size), make([]byte, size)
	var outstanding []sent
	next := uint64(0)
	send := func() error {
		stamp(sbuf, next)
		if err := ch.Send(flow, sbuf); err != nil {
			return err
		}
		outstanding = append(outstanding, sent{next, time.Now()})
		next++
		return nil
	}
	start := time.Now()
	warmEnd := start.Add(time.Duration(warmup * float64(time.Second)))
	end := warmEnd.Add(time.Duration(duration * float64(time.Second)))
	for i := 0; i < window; i++ {
		if err := send(); err != nil {
			return err
		}
	}
	var rtts []time.Duration
	var messages, mismatches uint64
	// One context for the whole run (not one per message): an echo missing for 5 s past the
	// end fails the run.
	rctx, cancel := context.WithDeadline(context.Background(), end.Add(5*time.Second))
	defer cancel()
	now := time.Now()
	for now.Before(end) {
		n, _, err := ch.Recv(rctx, rbuf)
		if err != nil {
			return fmt.Errorf("recv (%d outstanding): %w", len(outstanding), err)
		}
		now = time.Now()
		s := outstanding[0]
		outstanding = outstanding[1:]
		stamp(want, s.seq)
		if n != size || !bytes.Equal(rbuf[:n], want) {
			mismatches++
		}
		if !now.Before(warmEnd) {
			messages++
			rtts = append(rtts, now.Sub(s.at))
		}
		if now.Before(end) {
			if err := send(); err != nil {
				return err
			}
		}
	}
	elapsed := now.Sub(warmEnd).Seconds()
	// Collect the echoes still in flight, then close the flow.
	for len(outstanding) > 0 {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _, err := ch.Recv(rctx, rbuf)
		cancel()
		if err != nil {
			break
		}
		outstanding = outstanding[1:]
	}
	_ = ch.CloseFlow(flow)
	report(size, window, elapsed, messages, mismatches, rtts, asJSON)
	if mismatches > 0 {
		return fmt.Errorf("%d echoes differed from what was sent", mismatches)
	}
	return nil
}

func report(size, window int, elapsed float64, messages, mismatches uint64, rtts []time.Duration, asJSON bool) {
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	us := func(q float64) float64 {
		if len(rtts) == 0 {
			return 0
		}
		i := int(q * float64(len(rtts)))
		if i >= len(rtts) {
			i = len(rtts) - 1
		}
		return float64(rtts[i].Nanoseconds()) / 1000
	}
	var sum time.Duration
	for _, r := range rtts {
		sum += r
	}
	mean := 0.0
	if len(rtts) > 0 {
		mean = float64(sum.Nanoseconds()) / float64(len(rtts)) / 1000
	}
	rate := 0.0
	if elapsed > 0 {
		rate = float64(messages) / elapsed
	}
	if asJSON {
		out, _ := json.Marshal(map[string]interface{}{
			"mode": "machnet-go", "size": size, "window": window, "flows": 1,
			"duration_s": elapsed, "messages": messages, "msgs_per_sec": rate,
			"gbit_per_sec": rate * float64(size) * 8 / 1e9, "mismatches": mismatches, "lost": 0,
			"rtt_us": map[string]float64{"p50": us(0.5), "p99": us(0.99), "p999": us(0.999),
				"max": us(1), "mean": mean},
		})
		fmt.Println(string(out))
		return
	}
	fmt.Printf("machnet-go: %d B messages, window %d, 1 flow, %.2f s measured\n", size, window, elapsed)
	fmt.Printf("  %d round trips: %.0f msg/s, %.3f Gbit/s payload each way\n", messages, rate, rate*float64(size)*8/1e9)
	fmt.Printf("  RTT us: p50 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n", us(0.5), us(0.99), us(0.999), us(1), mean)
	fmt.Printf("  mismatched echoes: %d\n", mismatches)
}
