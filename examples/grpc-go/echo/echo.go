// Package echo is the machnet.echo.v1.Echo gRPC service (examples/grpc/proto/echo.proto:
// `service Echo { rpc Unary(EchoRequest) returns (EchoReply); rpc Stream(stream EchoRequest)
// returns (stream EchoReply); }`, both messages `bytes payload = 1;`) for grpc-go, written by
// hand instead of generated (no protoc on the build machines): the messages are
// wrapperspb.BytesValue, whose only field is `bytes value = 1;` — the same wire format, so this
// service interoperates with code generated from echo.proto (tonic's included).
package echo

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// ServiceName is the full gRPC service name of echo.proto.
const ServiceName = "machnet.echo.v1.Echo"

// Msg is EchoRequest and EchoReply (field 1: payload).
type Msg = wrapperspb.BytesValue

// Server is what an Echo implementation provides.
type Server interface {
	// Unary answers one request.
	Unary(context.Context, *Msg) (*Msg, error)
	// Stream answers a stream of requests.
	Stream(grpc.BidiStreamingServer[Msg, Msg]) error
}

// Register adds srv to s.
func Register(s grpc.ServiceRegistrar, srv Server) {
	s.RegisterService(&serviceDesc, srv)
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*Server)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Unary",
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(Msg)
			if err := dec(in); err != nil {
				return nil, err
			}
			if icpt == nil {
				return srv.(Server).Unary(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/" + ServiceName + "/Unary"}
			return icpt(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(Server).Unary(ctx, req.(*Msg))
			})
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName: "Stream",
		Handler: func(srv any, stream grpc.ServerStream) error {
			return srv.(Server).Stream(&grpc.GenericServerStream[Msg, Msg]{ServerStream: stream})
		},
		ServerStreams: true,
		ClientStreams: true,
	}},
	Metadata: "echo.proto",
}

// Client calls an Echo service.
type Client struct{ cc grpc.ClientConnInterface }

// NewClient returns a client on cc.
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{cc} }

// Unary calls Echo.Unary.
func (c *Client) Unary(ctx context.Context, in *Msg, opts ...grpc.CallOption) (*Msg, error) {
	out := new(Msg)
	if err := c.cc.Invoke(ctx, "/"+ServiceName+"/Unary", in, out, opts...); err != nil {
		return nil, err
	}
	return out, nil
}

// Stream opens Echo.Stream.
func (c *Client) Stream(ctx context.Context, opts ...grpc.CallOption) (grpc.BidiStreamingClient[Msg, Msg], error) {
	s, err := c.cc.NewStream(ctx, &serviceDesc.Streams[0], "/"+ServiceName+"/Stream", opts...)
	if err != nil {
		return nil, err
	}
	return &grpc.GenericClientStream[Msg, Msg]{ClientStream: s}, nil
}

// Service is the echo implementation: every payload back unchanged. A Unary request whose
// payload starts with "sleep" waits until its context ends (to test deadlines); OnDone, if set,
// is told how each such wait and each Stream ended (the context's error: cancellation seen by
// the server).
type Service struct {
	OnDone func(method string, err error)
}

// Unary echoes in.
func (s *Service) Unary(ctx context.Context, in *Msg) (*Msg, error) {
	if len(in.Value) >= 5 && string(in.Value[:5]) == "sleep" {
		<-ctx.Done()
		if s.OnDone != nil {
			s.OnDone("Unary", ctx.Err())
		}
		return nil, ctx.Err()
	}
	return in, nil
}

// Stream echoes each request until the client closes its side or the call ends.
func (s *Service) Stream(st grpc.BidiStreamingServer[Msg, Msg]) error {
	for {
		in, err := st.Recv()
		if err != nil {
			if s.OnDone != nil {
				s.OnDone("Stream", st.Context().Err())
			}
			return nil
		}
		if err := st.Send(in); err != nil {
			return err
		}
	}
}
