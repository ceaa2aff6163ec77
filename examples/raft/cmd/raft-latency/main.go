// Command raft-latency measures how long a replicated command takes from Apply to committed
// (and applied) on the leader of a 3-node hashicorp/raft cluster, over the Machnet transport
// and over raft's own TCP transport, in the same run. The Machnet nodes use three sidecars
// (--sockets, --ips); the TCP nodes listen on the same three addresses. Commands are applied
// one at a time; after each run the tool checks that every command reached all three nodes and
// that their states are byte-identical. Rounds alternate between the transports.
//
//	raft-latency --sockets a.sock,b.sock,c.sock --ips 127.0.0.1,127.0.0.2,127.0.0.3 \
//	    --count 2000 --warmup 200 --size 80
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	machnetraft "github.com/machnet-rs/machnet-rs/examples/raft"
)

type result struct {
	Transport string  `json:"transport"`
	Applies   int     `json:"applies"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	P999us    float64 `json:"p999_us"`
	MeanUs    float64 `json:"mean_us"`
	PerSec    float64 `json:"applies_per_sec"`
}

func main() {
	sockets := flag.String("sockets", "", "three sidecar control sockets, comma-separated")
	ips := flag.String("ips", "127.0.0.1,127.0.0.2,127.0.0.3", "the sidecars' IPv4 addresses")
	count := flag.Int("count", 2000, "measured applies per transport (split over the rounds)")
	warmup := flag.Int("warmup", 200, "unmeasured applies at the start of each round")
	size := flag.Int("size", 80, "command size in bytes (>= 16)")
	rounds := flag.Int("rounds", 2, "rounds per transport, alternating")
	port := flag.Int("port", 7500, "first Machnet port to listen on")
	seed := flag.Int64("seed", 0, "seed of the command values (0: from the clock)")
	asJSON := flag.Bool("json", false, "print JSON instead of the table")
	flag.Parse()
	socks := strings.Split(*sockets, ",")
	addrs := strings.Split(*ips, ",")
	if len(socks) != 3 || len(addrs) != 3 || *size < 16 || *rounds < 1 || *count < *rounds {
		fmt.Fprintln(os.Stderr, "raft-latency: need --sockets and --ips with three entries each, --size >= 16, --count >= --rounds")
		os.Exit(2)
	}
	if *seed == 0 {
		*seed = time.Now().UnixNano()
	}
	fmt.Fprintf(os.Stderr, "raft-latency: seed %d\n", *seed)
	r := rand.New(rand.NewSource(*seed))
	mk := func(i int) []byte {
		key := fmt.Sprintf("lat%06d", i)
		v := make([]byte, *size-3-len(key))
		r.Read(v)
		return machnetraft.SetCommand(key, v)
	}
	if n := len(mk(0)); n != *size {
		panic(fmt.Sprintf("command is %d bytes, want %d", n, *size))
	}

	samples := map[string][]time.Duration{}
	elapsed := map[string]time.Duration{}
	nextPort := *port
	for round := 0; round < *rounds; round++ {
		for _, kind := range []string{"machnet", "tcp"} {
			var trans []raft.Transport
			var err error
			if kind == "machnet" {
				trans, err = machnetTransports(socks, addrs, nextPort)
				nextPort += 3
			} else {
				trans, err = tcpTransports(addrs)
			}
			if err != nil {
				fatal("%s transports: %v", kind, err)
			}
			n := *count / *rounds
			start := time.Now()
			lat, err := run(trans, *warmup, n, mk)
			if err != nil {
				fatal("%s round %d: %v", kind, round+1, err)
			}
			elapsed[kind] += time.Since(start)
			samples[kind] = append(samples[kind], lat...)
		}
	}

	var results []result
	for _, kind := range []string{"machnet", "tcp"} {
		s := samples[kind]
		sortDurations(s)
		var sum time.Duration
		for _, d := range s {
			sum += d
		}
		us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
		results = append(results, result{
			Transport: kind, Applies: len(s),
			P50us: us(machnetraft.Percentile(s, 0.50)), P99us: us(machnetraft.Percentile(s, 0.99)),
			P999us: us(machnetraft.Percentile(s, 0.999)), MeanUs: us(sum / time.Duration(len(s))),
			PerSec: float64(len(s)) / sum.Seconds(),
		})
	}
	if *asJSON {
		_ = json.NewEncoder(os.Stdout).Encode(results)
		return
	}
	fmt.Printf("raft Apply -> committed on the leader: %d B command, 3 nodes, one command at a time, %d rounds each (alternating), %d warm-up applies per round\n",
		*size, *rounds, *warmup)
	fmt.Printf("%-22s %8s %10s %10s %10s %10s %12s\n", "transport", "applies", "p50 us", "p99 us", "p99.9 us", "mean us", "applies/s")
	names := map[string]string{"machnet": "machnet (sidecars)", "tcp": "tcp (raft.NewTCP...)"}
	for _, res := range results {
		fmt.Printf("%-22s %8d %10.1f %10.1f %10.1f %10.1f %12.0f\n", names[res.Transport], res.Applies,
			res.P50us, res.P99us, res.P999us, res.MeanUs, res.PerSec)
	}
	if len(results) == 2 && results[0].P50us > 0 {
		fmt.Printf("p50 ratio tcp/machnet: %.2f\n", results[1].P50us/results[0].P50us)
	}
}

func fatal(f string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "raft-latency: "+f+"\n", a...)
	os.Exit(1)
}

func sortDurations(s []time.Duration) {
	sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
}

func machnetTransports(socks, ips []string, port int) ([]raft.Transport, error) {
	var out []raft.Transport
	for i := range socks {
		t, err := machnetraft.NewTransport(machnetraft.Config{Socket: socks[i], LocalIP: ips[i], Port: uint16(port + i)})
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

func tcpTransports(ips []string) ([]raft.Transport, error) {
	var out []raft.Transport
	for _, ip := range ips {
		addr := net.JoinHostPort(ip, "0")
		t, err := raft.NewTCPTransport(addr, nil, 3, 10*time.Second, os.Stderr)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// run starts a 3-node cluster over trans, measures, checks every node got every command with
// identical state, and stops the cluster.
func run(trans []raft.Transport, warmup, count int, mk func(int) []byte) ([]time.Duration, error) {
	servers := make([]raft.Server, len(trans))
	for i, t := range trans {
		servers[i] = raft.Server{Suffrage: raft.Voter, ID: raft.ServerID("n" + strconv.Itoa(i+1)), Address: t.LocalAddr()}
	}
	var nodes []*machnetraft.Node
	defer func() {
		for _, n := range nodes {
			_ = n.Stop()
		}
	}()
	for i, t := range trans {
		n, err := machnetraft.StartNode(machnetraft.RaftConfig(servers[i].ID, os.Stderr), t, servers, true)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	leader, err := machnetraft.WaitLeader(nodes, 30*time.Second)
	if err != nil {
		return nil, err
	}
	lat, err := machnetraft.Latencies(leader.Raft, warmup, count, mk)
	if err != nil {
		return nil, err
	}
	if err := machnetraft.WaitApplied(nodes, warmup+count, 30*time.Second); err != nil {
		return nil, err
	}
	ref := nodes[0].FSM.Dump()
	for _, n := range nodes[1:] {
		if !bytes.Equal(n.FSM.Dump(), ref) {
			return nil, fmt.Errorf("state of %s differs from %s", n.ID, nodes[0].ID)
		}
	}
	return lat, nil
}
