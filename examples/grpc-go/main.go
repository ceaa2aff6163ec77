// grpc-echo: the machnet.echo.v1.Echo service (echo/) over grpc-go, served on a Machnet
// listener (grpc.Server.Serve(machnetListener)) and dialed with grpc.WithContextDialer, and a
// benchmark of unary latency over Machnet against the same service over kernel TCP:
//
//	grpc-echo bench --server-socket A.sock --client-socket B.sock --server-ip 127.0.0.1 \
//	    [--port 950] [--tcp-port 0] [--rounds 5] [--calls 2000] [--size 64]
//
// The servers (Machnet on sidecar A, TCP on 127.0.0.1) and the clients (Machnet through
// sidecar B) run in this process; rounds alternate between the transports (which goes first
// alternates too) and print p50/p99 per round, then the medians and the ratio Machnet / TCP.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"time"

	"github.com/machnet-rs/machnet-rs/examples/grpc-go/echo"
	machnet "github.com/machnet-rs/machnet-rs/go"
	"google.golang.org/grpc"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "bench" {
		fmt.Fprintln(os.Stderr, "usage: grpc-echo bench --server-socket A.sock --client-socket B.sock --server-ip IP [...]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	srvSock := fs.String("server-socket", "", "control socket of the server's sidecar")
	cliSock := fs.String("client-socket", "", "control socket of the client's sidecar")
	srvIP := fs.String("server-ip", "127.0.0.1", "the server sidecar's IP")
	port := fs.Uint("port", 950, "Machnet port of the server")
	tcpPort := fs.Int("tcp-port", 0, "TCP port of the server (0: any free)")
	rounds := fs.Int("rounds", 5, "rounds per transport")
	calls := fs.Int("calls", 2000, "unary calls per round (after 200 warm-up calls)")
	size := fs.Int("size", 64, "payload bytes")
	_ = fs.Parse(os.Args[2:])
	if err := bench(*srvSock, *cliSock, *srvIP, uint16(*port), *tcpPort, *rounds, *calls, *size); err != nil {
		fmt.Fprintln(os.Stderr, "grpc-echo:", err)
		os.Exit(1)
	}
}

func bench(srvSock, cliSock, srvIP string, port uint16, tcpPort, rounds, calls, size int) error {
	srv, err := machnet.Open(srvSock)
	if err != nil {
		return err
	}
	cli, err := machnet.Open(cliSock)
	if err != nil {
		return err
	}
	ml, err := srv.Listen("0.0.0.0", port)
	if err != nil {
		return err
	}
	tl, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", tcpPort))
	if err != nil {
		return err
	}
	svc := &echo.Service{}
	ms, ts := serve(ml, svc), serve(tl, svc)
	defer ms.Stop()
	defer ts.Stop()
	d := cli.NewDialer(machnet.StreamConfig{})
	mc, err := dialMachnet(d, net.JoinHostPort(srvIP, fmt.Sprint(port)))
	if err != nil {
		return err
	}
	tc, err := dialTCP(tl.Addr().String())
	if err != nil {
		return err
	}
	clients := []struct {
		name string
		cc   *grpc.ClientConn
	}{{"machnet", mc}, {"tcp", tc}}
	payload := make([]byte, size)
	p50s := map[string][]time.Duration{}
	p99s := map[string][]time.Duration{}
	fmt.Printf("unary echo, %d B payload, %d calls per round, window 1\n", size, calls)
	for r := 0; r < rounds; r++ {
		order := []int{0, 1}
		if r%2 == 1 {
			order = []int{1, 0}
		}
		for _, i := range order {
			c := clients[i]
			lat, err := round(echo.NewClient(c.cc), payload, calls)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			p50, p99 := pct(lat, 50), pct(lat, 99)
			p50s[c.name] = append(p50s[c.name], p50)
			p99s[c.name] = append(p99s[c.name], p99)
			fmt.Printf("round %d %-8s p50 %7.1f us  p99 %7.1f us\n", r+1, c.name, us(p50), us(p99))
		}
	}
	m50, m99 := median(p50s["machnet"]), median(p99s["machnet"])
	t50, t99 := median(p50s["tcp"]), median(p99s["tcp"])
	fmt.Printf("median of rounds: machnet p50 %.1f us p99 %.1f us; tcp p50 %.1f us p99 %.1f us\n",
		us(m50), us(m99), us(t50), us(t99))
	fmt.Printf("ratio machnet/tcp: p50 %.2fx  p99 %.2fx\n", float64(m50)/float64(t50), float64(m99)/float64(t99))
	return nil
}

// round makes 200 warm-up calls, then `calls` timed ones, one at a time.
func round(c *echo.Client, payload []byte, calls int) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, calls)
	for i := 0; i < 200+calls; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t0 := time.Now()
		out, err := c.Unary(ctx, &echo.Msg{Value: payload})
		d := time.Since(t0)
		cancel()
		if err != nil {
			return nil, err
		}
		if len(out.Value) != len(payload) {
			return nil, fmt.Errorf("echo of %d bytes came back with %d", len(payload), len(out.Value))
		}
		if i >= 200 {
			lat = append(lat, d)
		}
	}
	return lat, nil
}

func pct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)*p/100]
}

func median(d []time.Duration) time.Duration { return pct(d, 50) }

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
