package machnetraft

// hashicorp/raft's own transport test cases (raft v1.7.3: transport_test.go's TestTransport_*
// and net_transport_test.go's TestNetworkTransport_ AppendEntriesPipeline_MaxRPCsInFlight,
// Heartbeat_FastPath, AppendEntriesPipeline_CloseStreams and EncodeDecode_AddressProvider),
// run against this transport with raft's assertions. Changed: the construction of the
// transports; each case also runs against the transport raft's test uses (InmemTransport for
// the TestTransport_* cases, which need raft.WithPeers; the TCP NetworkTransport for
// MaxRPCsInFlight) as a control; and the waits for something that must happen are raft's
// 200 ms / 50 ms raised to patientWait (three sidecars and -race on a small shared machine).
// The waits asserting that something does NOT happen keep raft's 50 ms.

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// patientWait replaces raft's 200 ms / 50 ms waits for an event that must come.
const patientWait = 10 * time.Second

// loopback is raft.LoopbackTransport: what raft's TestTransport_* cases need.
type loopback interface {
	raft.Transport
	raft.WithPeers
	raft.WithClose
}

// newTestTransport is raft's NewTestTransport over the kinds compared here; i picks the sidecar.
// The Machnet transport gets MaxRPCsInFlight 130 (NetworkTransport's behaviour before raft
// 1.4.1): raft's TestTransport_AppendEntriesPipeline sends 10 AppendEntries before it reads the
// pipeline's Consumer, which InmemTransport's pipeline (16 buffered responses) allows; with
// the default of 2 the third one blocks, over raft's TCP NetworkTransport as over this one.
func newTestTransport(t *testing.T, kind string, i int) (raft.ServerAddress, loopback) {
	t.Helper()
	if kind == "inmem" {
		return raft.NewInmemTransport("")
	}
	sc := sidecars(t)[i]
	tr, err := NewTransport(Config{Socket: sc.socket, LocalIP: sc.ip, Port: port(), MaxRPCsInFlight: 130})
	if err != nil {
		t.Fatalf("NewTransport on %s: %v", sc.ip, err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr.LocalAddr(), tr
}

var loopbackKinds = []string{"machnet", "inmem"}

func TestRaftTransport_StartStop(t *testing.T) {
	for _, kind := range loopbackKinds {
		_, trans := newTestTransport(t, kind, 0)
		if err := trans.Close(); err != nil {
			t.Fatalf("%s: err: %v", kind, err)
		}
	}
}

func TestRaftTransport_AppendEntries(t *testing.T) {
	for _, kind := range loopbackKinds {
		t.Run(kind, func(t *testing.T) {
			addr1, trans1 := newTestTransport(t, kind, 0)
			defer trans1.Close()
			rpcCh := trans1.Consumer()

			// Make the RPC request
			args := raft.AppendEntriesRequest{
				Term:         10,
				PrevLogEntry: 100,
				PrevLogTerm:  4,
				Entries: []*raft.Log{
					{
						Index: 101,
						Term:  4,
						Type:  raft.LogNoop,
					},
				},
				LeaderCommitIndex: 90,
				RPCHeader:         raft.RPCHeader{Addr: []byte("cartman")},
			}

			resp := raft.AppendEntriesResponse{
				Term:    4,
				LastLog: 90,
				Success: true,
			}

			// Listen for a request
			go func() {
				select {
				case rpc := <-rpcCh:
					// Verify the command
					req := rpc.Command.(*raft.AppendEntriesRequest)
					if !reflect.DeepEqual(req, &args) {
						t.Errorf("command mismatch: %#v %#v", *req, args)
						return
					}
					rpc.Respond(&resp, nil)

				case <-time.After(patientWait):
					t.Errorf("timeout")
				}
			}()

			// Transport 2 makes outbound request
			addr2, trans2 := newTestTransport(t, kind, 1)
			defer trans2.Close()

			trans1.Connect(addr2, trans2)
			trans2.Connect(addr1, trans1)

			var out raft.AppendEntriesResponse
			if err := trans2.AppendEntries("id1", trans1.LocalAddr(), &args, &out); err != nil {
				t.Fatalf("err: %v", err)
			}

			// Verify the response
			if !reflect.DeepEqual(resp, out) {
				t.Fatalf("command mismatch: %#v %#v", resp, out)
			}
		})
	}
}

func TestRaftTransport_AppendEntriesPipeline(t *testing.T) {
	for _, kind := range loopbackKinds {
		t.Run(kind, func(t *testing.T) {
			addr1, trans1 := newTestTransport(t, kind, 0)
			defer trans1.Close()
			rpcCh := trans1.Consumer()

			// Make the RPC request
			args := raft.AppendEntriesRequest{
				Term:         10,
				PrevLogEntry: 100,
				PrevLogTerm:  4,
				Entries: []*raft.Log{
					{
						Index: 101,
						Term:  4,
						Type:  raft.LogNoop,
					},
				},
				LeaderCommitIndex: 90,
				RPCHeader:         raft.RPCHeader{Addr: []byte("cartman")},
			}

			resp := raft.AppendEntriesResponse{
				Term:    4,
				LastLog: 90,
				Success: true,
			}

			// Listen for a request
			go func() {
				for i := 0; i < 10; i++ {
					select {
					case rpc := <-rpcCh:
						// Verify the command
						req := rpc.Command.(*raft.AppendEntriesRequest)
						if !reflect.DeepEqual(req, &args) {
							t.Errorf("command mismatch: %#v %#v", *req, args)
							return
						}
						rpc.Respond(&resp, nil)

					case <-time.After(patientWait):
						t.Errorf("timeout")
						return
					}
				}
			}()

			// Transport 2 makes outbound request
			addr2, trans2 := newTestTransport(t, kind, 1)
			defer trans2.Close()

			trans1.Connect(addr2, trans2)
			trans2.Connect(addr1, trans1)

			pipeline, err := trans2.AppendEntriesPipeline("id1", trans1.LocalAddr())
			if err != nil {
				t.Fatalf("err: %v", err)
			}
			defer pipeline.Close()
			for i := 0; i < 10; i++ {
				out := new(raft.AppendEntriesResponse)
				if _, err := pipeline.AppendEntries(&args, out); err != nil {
					t.Fatalf("err: %v", err)
				}
			}

			respCh := pipeline.Consumer()
			for i := 0; i < 10; i++ {
				select {
				case ready := <-respCh:
					// Verify the response
					if !reflect.DeepEqual(&resp, ready.Response()) {
						t.Fatalf("command mismatch: %#v %#v", &resp, ready.Response())
					}
				case <-time.After(patientWait):
					t.Fatalf("timeout")
				}
			}
		})
	}
}

func TestRaftTransport_RequestVote(t *testing.T) {
	for _, kind := range loopbackKinds {
		t.Run(kind, func(t *testing.T) {
			addr1, trans1 := newTestTransport(t, kind, 0)
			defer trans1.Close()
			rpcCh := trans1.Consumer()

			// Make the RPC request
			args := raft.RequestVoteRequest{
				Term:         20,
				LastLogIndex: 100,
				LastLogTerm:  19,
				RPCHeader:    raft.RPCHeader{Addr: []byte("butters")},
			}
			resp := raft.RequestVoteResponse{
				Term:    100,
				Granted: false,
			}

			// Listen for a request
			go func() {
				select {
				case rpc := <-rpcCh:
					// Verify the command
					req := rpc.Command.(*raft.RequestVoteRequest)
					if !reflect.DeepEqual(req, &args) {
						t.Errorf("command mismatch: %#v %#v", *req, args)
						return
					}

					rpc.Respond(&resp, nil)

				case <-time.After(patientWait):
					t.Errorf("timeout")
				}
			}()

			// Transport 2 makes outbound request
			addr2, trans2 := newTestTransport(t, kind, 1)
			defer trans2.Close()

			trans1.Connect(addr2, trans2)
			trans2.Connect(addr1, trans1)

			var out raft.RequestVoteResponse
			if err := trans2.RequestVote("id1", trans1.LocalAddr(), &args, &out); err != nil {
				t.Fatalf("err: %v", err)
			}

			// Verify the response
			if !reflect.DeepEqual(resp, out) {
				t.Fatalf("command mismatch: %#v %#v", resp, out)
			}
		})
	}
}

func TestRaftTransport_InstallSnapshot(t *testing.T) {
	for _, kind := range loopbackKinds {
		t.Run(kind, func(t *testing.T) {
			addr1, trans1 := newTestTransport(t, kind, 0)
			defer trans1.Close()
			rpcCh := trans1.Consumer()

			// Make the RPC request
			args := raft.InstallSnapshotRequest{
				Term:         10,
				LastLogIndex: 100,
				LastLogTerm:  9,
				Peers:        []byte("blah blah"),
				Size:         10,
				RPCHeader:    raft.RPCHeader{Addr: []byte("kyle")},
			}

			resp := raft.InstallSnapshotResponse{
				Term:    10,
				Success: true,
			}

			// Listen for a request
			go func() {
				select {
				case rpc := <-rpcCh:
					// Verify the command
					req := rpc.Command.(*raft.InstallSnapshotRequest)
					if !reflect.DeepEqual(req, &args) {
						t.Errorf("command mismatch: %#v %#v", *req, args)
						return
					}

					// Try to read the bytes
					buf := make([]byte, 10)
					_, _ = rpc.Reader.Read(buf)

					// Compare
					if !bytes.Equal(buf, []byte("0123456789")) {
						t.Errorf("bad buf %v", buf)
						return
					}

					rpc.Respond(&resp, nil)

				case <-time.After(patientWait):
					t.Errorf("timeout")
				}
			}()

			// Transport 2 makes outbound request
			addr2, trans2 := newTestTransport(t, kind, 1)
			defer trans2.Close()

			trans1.Connect(addr2, trans2)
			trans2.Connect(addr1, trans1)

			// Create a buffer
			buf := bytes.NewBuffer([]byte("0123456789"))

			var out raft.InstallSnapshotResponse
			if err := trans2.InstallSnapshot("id1", trans1.LocalAddr(), &args, &out, buf); err != nil {
				t.Fatalf("err: %v", err)
			}

			// Verify the response
			if !reflect.DeepEqual(resp, out) {
				t.Fatalf("command mismatch: %#v %#v", resp, out)
			}
		})
	}
}

func TestRaftTransport_EncodeDecode(t *testing.T) {
	for _, kind := range loopbackKinds {
		_, trans1 := newTestTransport(t, kind, 0)
		defer trans1.Close()

		local := trans1.LocalAddr()
		enc := trans1.EncodePeer("aaaa", local)
		dec := trans1.DecodePeer(enc)

		if dec != local {
			t.Fatalf("%s: enc/dec fail: %v %v", kind, dec, local)
		}
	}
}

// testAddrProvider is raft's (net_transport_test.go).
type testAddrProvider struct {
	addr string
}

func (t *testAddrProvider) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	return raft.ServerAddress(t.addr), nil
}

func makeAppendRPC() raft.AppendEntriesRequest {
	return raft.AppendEntriesRequest{
		Term:         10,
		PrevLogEntry: 100,
		PrevLogTerm:  4,
		Entries: []*raft.Log{
			{
				Index: 101,
				Term:  4,
				Type:  raft.LogNoop,
			},
		},
		LeaderCommitIndex: 90,
		RPCHeader:         raft.RPCHeader{Addr: []byte("cartman")},
	}
}

func makeAppendRPCResponse() raft.AppendEntriesResponse {
	return raft.AppendEntriesResponse{
		Term:    4,
		LastLog: 90,
		Success: true,
	}
}

// newConfiguredTransport makes transport i of raft's MaxRPCsInFlight test: the TCP
// NetworkTransport with raft's config, or this transport with the same settings.
func newConfiguredTransport(t *testing.T, kind string, i int, config *raft.NetworkTransportConfig) (closer, error) {
	if kind == "tcp" {
		return raft.NewTCPTransportWithConfig("127.0.0.1:0", nil, config)
	}
	sc := sidecars(t)[i]
	return NewTransport(Config{Socket: sc.socket, LocalIP: sc.ip, Port: port(),
		MaxRPCsInFlight: config.MaxRPCsInFlight, Timeout: config.Timeout,
		ServerAddressProvider: config.ServerAddressProvider})
}

type closer interface {
	raft.Transport
	raft.WithClose
}

func TestRaftNetworkTransport_AppendEntriesPipeline_MaxRPCsInFlight(t *testing.T) {
	sidecars(t)
	for _, kind := range []string{"tcp", "machnet"} {
		// Test the important cases 0 (default to 2), 1 (disabled), 2 and "some"
		for _, max := range []int{0, 1, 2, 10} {
			t.Run(fmt.Sprintf("%s/max=%d", kind, max), func(t *testing.T) {
				config := &raft.NetworkTransportConfig{
					MaxPool:         2,
					MaxRPCsInFlight: max,
					Timeout:         time.Second,
					// Don't use test logger as the transport has multiple goroutines and
					// causes panics.
					ServerAddressProvider: &testAddrProvider{"localhost:0"},
				}

				// Transport 1 is consumer
				trans1, err := newConfiguredTransport(t, kind, 0, config)
				if err != nil {
					t.Fatal(err)
				}
				defer trans1.Close()

				// Make the RPC request
				args := makeAppendRPC()
				resp := makeAppendRPCResponse()

				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()

				// Transport 2 makes outbound request
				config.ServerAddressProvider = &testAddrProvider{string(trans1.LocalAddr())}
				trans2, err := newConfiguredTransport(t, kind, 1, config)
				if err != nil {
					t.Fatal(err)
				}
				defer trans2.Close()

				// Kill the transports on the timeout to unblock. That means things that
				// shouldn't have blocked did block.
				go func() {
					<-ctx.Done()
					trans2.Close()
					trans1.Close()
				}()

				// Attempt to pipeline
				pipeline, err := trans2.AppendEntriesPipeline("id1", trans1.LocalAddr())
				if max == 1 {
					// Max == 1 implies no pipelining
					if err == nil || err.Error() != raft.ErrPipelineReplicationNotSupported.Error() {
						t.Fatalf("want %v, got %v", raft.ErrPipelineReplicationNotSupported, err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}

				expectedMax := max
				if max == 0 {
					// Should have defaulted to 2
					expectedMax = 2
				}

				for i := 0; i < expectedMax-1; i++ {
					// We should be able to send `max - 1` rpcs before `AppendEntries`
					// blocks. It blocks on the `max` one because it sends before pushing
					// to the chan. It will block forever when it does because nothing is
					// responding yet.
					out := new(raft.AppendEntriesResponse)
					_, err := pipeline.AppendEntries(&args, out)
					if err != nil {
						t.Fatal(err)
					}
				}

				// Verify the next send blocks without blocking test forever
				errCh := make(chan error, 1)
				go func() {
					out := new(raft.AppendEntriesResponse)
					_, err := pipeline.AppendEntries(&args, out)
					errCh <- err
				}()

				select {
				case err := <-errCh:
					t.Fatalf("AppendEntries didn't block with %d in flight (err %v)", max, err)
				case <-time.After(50 * time.Millisecond):
					// OK it's probably blocked or we got _really_ unlucky with scheduling!
				}

				// Verify that once we receive/respond another one can be sent.
				rpc := <-trans1.Consumer()
				rpc.Respond(&resp, nil)

				// We also need to consume the response from the pipeline in case chan is
				// unbuffered (inflight is 2 or 1)
				<-pipeline.Consumer()

				// The last append should unblock once the response is received.
				select {
				case <-errCh:
					// OK
				case <-time.After(patientWait):
					t.Fatalf("last append didn't unblock")
				}
			})
		}
	}
}

// makeTransport is raft's (net_transport_test.go) for both kinds: MaxRPCsInFlight 130 ("older
// tests for pipelining were written when this was a constant"), 1 s timeout, and optionally a
// ServerAddressProvider returning addressOverride. i picks the sidecar.
func makeTransport(t *testing.T, kind string, i int, useAddrProvider bool, addressOverride string) (closer, error) {
	config := &raft.NetworkTransportConfig{
		MaxPool:         2,
		MaxRPCsInFlight: 130,
		Timeout:         time.Second,
	}
	if useAddrProvider {
		config.ServerAddressProvider = &testAddrProvider{addressOverride}
	}
	return newConfiguredTransport(t, kind, i, config)
}

func TestRaftNetworkTransport_Heartbeat_FastPath(t *testing.T) {
	sidecars(t)
	for _, kind := range []string{"tcp", "machnet"} {
		t.Run(kind, func(t *testing.T) {
			// Transport 1 is consumer
			trans1, err := makeTransport(t, kind, 0, false, "")
			if err != nil {
				t.Fatalf("err: %v", err)
			}
			defer trans1.Close()

			// Make the RPC request
			args := raft.AppendEntriesRequest{
				Term:      10,
				RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, Addr: []byte("cartman")},
				Leader:    []byte("cartman"),
			}

			resp := raft.AppendEntriesResponse{
				Term:    4,
				LastLog: 90,
				Success: true,
			}

			var invoked int32 // raft's test uses a plain bool; -race needs an atomic here
			fastpath := func(rpc raft.RPC) {
				// Verify the command
				req := rpc.Command.(*raft.AppendEntriesRequest)
				if !reflect.DeepEqual(req, &args) {
					t.Errorf("command mismatch: %#v %#v", *req, args)
				}

				atomic.StoreInt32(&invoked, 1)
				rpc.Respond(&resp, nil)
			}
			trans1.SetHeartbeatHandler(fastpath)

			// Transport 2 makes outbound request
			trans2, err := makeTransport(t, kind, 1, false, "")
			if err != nil {
				t.Fatalf("err: %v", err)
			}
			defer trans2.Close()

			var out raft.AppendEntriesResponse
			if err := trans2.AppendEntries("id1", trans1.LocalAddr(), &args, &out); err != nil {
				t.Fatalf("err: %v", err)
			}

			// Verify the response
			if !reflect.DeepEqual(resp, out) {
				t.Fatalf("command mismatch: %#v %#v", resp, out)
			}

			// Ensure fast-path is used
			if atomic.LoadInt32(&invoked) == 0 {
				t.Fatalf("fast-path not used")
			}
		})
	}
}

func TestRaftNetworkTransport_AppendEntriesPipeline_CloseStreams(t *testing.T) {
	sidecars(t)
	for _, kind := range []string{"tcp", "machnet"} {
		t.Run(kind, func(t *testing.T) {
			// Transport 1 is consumer
			trans1, err := makeTransport(t, kind, 0, true, "localhost:0")
			if err != nil {
				t.Fatalf("err: %v", err)
			}
			defer trans1.Close()
			rpcCh := trans1.Consumer()

			// Make the RPC request
			args := makeAppendRPC()
			resp := makeAppendRPCResponse()

			shutdownCh := make(chan struct{})
			defer close(shutdownCh)
			// Added to raft's test: CloseStreams closes the streams transport 1 has; a stream it
			// has not yet taken in (TCP: not yet handed to a handler; Machnet: its accept not yet
			// received) survives it, and then raft's assertion fails over TCP too (seen in 1 of
			// 20 -race runs). So CloseStreams waits until a request came in.
			firstIn := make(chan struct{})
			var firstOnce sync.Once

			// Listen for a request
			go func() {
				for {
					select {
					case rpc := <-rpcCh:
						firstOnce.Do(func() { close(firstIn) })
						// Verify the command
						req := rpc.Command.(*raft.AppendEntriesRequest)
						if !reflect.DeepEqual(req, &args) {
							t.Errorf("command mismatch: %#v %#v", *req, args)
							return
						}
						rpc.Respond(&resp, nil)

					case <-shutdownCh:
						return
					}
				}
			}()

			// Transport 2 makes outbound request
			trans2, err := makeTransport(t, kind, 1, true, string(trans1.LocalAddr()))
			if err != nil {
				t.Fatalf("err: %v", err)
			}
			defer trans2.Close()

			for _, cancelStreams := range []bool{true, false} {
				pipeline, err := trans2.AppendEntriesPipeline("id1", trans1.LocalAddr())
				if err != nil {
					t.Fatalf("err: %v", err)
				}

				for i := 0; i < 100; i++ {
					// On the last one, close the streams on the transport one.
					if cancelStreams && i == 10 {
						select {
						case <-firstIn:
						case <-time.After(patientWait):
							t.Fatalf("no request reached transport 1")
						}
						trans1.(interface{ CloseStreams() }).CloseStreams()
						time.Sleep(10 * time.Millisecond)
					}

					out := new(raft.AppendEntriesResponse)
					if _, err := pipeline.AppendEntries(&args, out); err != nil {
						break
					}
				}

				var futureErr error
				respCh := pipeline.Consumer()
			OUTER:
				for i := 0; i < 100; i++ {
					select {
					case ready := <-respCh:
						if err := ready.Error(); err != nil {
							futureErr = err
							break OUTER
						}

						// Verify the response
						if !reflect.DeepEqual(&resp, ready.Response()) {
							t.Fatalf("command mismatch: %#v %#v %v", &resp, ready.Response(), ready.Error())
						}
					case <-time.After(patientWait):
						t.Fatalf("timeout when cancel streams is %v", cancelStreams)
					}
				}

				if cancelStreams && futureErr == nil {
					t.Fatalf("expected an error due to the streams being closed")
				} else if !cancelStreams && futureErr != nil {
					t.Fatalf("unexpected error: %v", futureErr)
				}

				pipeline.Close()
			}
		})
	}
}

func TestRaftNetworkTransport_EncodeDecode_AddressProvider(t *testing.T) {
	sidecars(t)
	for _, kind := range []string{"tcp", "machnet"} {
		addressOverride := "localhost:11111"
		trans1, err := makeTransport(t, kind, 0, true, addressOverride)
		if err != nil {
			t.Fatalf("err: %v", err)
		}
		defer trans1.Close()

		local := trans1.LocalAddr()
		enc := trans1.EncodePeer("id1", local)
		dec := trans1.DecodePeer(enc)

		if dec != raft.ServerAddress(addressOverride) {
			t.Fatalf("%s: enc/dec fail: %v %v", kind, dec, addressOverride)
		}
	}
}
