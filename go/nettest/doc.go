// Package nettest runs golang.org/x/net/nettest.TestConn, the standard net.Conn conformance
// suite (deadlines, Close unblocking Read and Write, concurrent methods, racy reads and writes,
// ping-pong), against pairs of Machnet Conns (machnet.Sidecar.Listen / Dialer) through two real
// sidecars. It is a module of its own because golang.org/x/net needs a newer Go than the
// binding's minimum (1.19). ci/ffi.sh runs it with the binding's tests (MACHNET_TEST_* set).
package nettest
