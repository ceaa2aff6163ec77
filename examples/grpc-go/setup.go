package main

import (
	"context"
	"net"

	"github.com/machnet-rs/machnet-rs/examples/grpc-go/echo"
	machnet "github.com/machnet-rs/machnet-rs/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// maxMsg lets 5 MiB messages through (gRPC's default limit is 4 MiB).
const maxMsg = 16 << 20

// serve runs the echo service on l (a Machnet Listener or a TCP one) until the server stops.
func serve(l net.Listener, svc *echo.Service) *grpc.Server {
	s := grpc.NewServer(grpc.MaxRecvMsgSize(maxMsg), grpc.MaxSendMsgSize(maxMsg))
	echo.Register(s, svc)
	go func() { _ = s.Serve(l) }()
	return s
}

// dialMachnet is a gRPC client of addr ("ip:port") over Machnet flows of dialer d.
func dialMachnet(d *machnet.Dialer, addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return d.DialContext(ctx, "machnet", a)
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)))
}

// dialTCP is the same client over kernel TCP.
func dialTCP(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)))
}
