// Command raft-node runs one hashicorp/raft server with the replicated KV state machine over
// the Machnet transport, controlled over HTTP (for the multi-process test, which SIGKILLs the
// leader's process):
//
//	raft-node --id n1 --socket a.sock --ip 127.0.0.1 --port 7201 \
//	    --peers n1=127.0.0.1:7201,n2=127.0.0.2:7202,n3=127.0.0.3:7203 --http 127.0.0.1:0
//
// Every node bootstraps with the same --peers. Once serving it prints `READY <http address>`.
// With --kv-port P it also serves the request format of examples/kv over Machnet on port P of
// its sidecar (writes through raft; see kvserver.go and the README).
// HTTP: GET /status (JSON: id, state, leader, applied, last_index, commit_index, kv_port), POST /apply
// (body: a command; only on the leader; answers once committed and applied), GET /applied
// (JSON list of applied entries), GET /dump (the state's deterministic serialisation).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	machnetraft "github.com/machnet-rs/machnet-rs/examples/raft"
)

type status struct {
	ID          string `json:"id"`
	State       string `json:"state"`
	Leader      string `json:"leader"`
	Applied     int    `json:"applied"`
	LastIndex   uint64 `json:"last_index"`
	CommitIndex string `json:"commit_index"`
	KVPort      int    `json:"kv_port"` // 0: no KV front end
}

func main() {
	id := flag.String("id", "", "this server's raft ID")
	socket := flag.String("socket", "", "the sidecar's control socket")
	ip := flag.String("ip", "127.0.0.1", "the sidecar's IPv4 address")
	port := flag.Int("port", 7201, "Machnet port to listen on")
	peers := flag.String("peers", "", "id=ip:port,... for every server (this one included)")
	httpAddr := flag.String("http", "127.0.0.1:0", "HTTP control address")
	timeout := flag.Duration("rpc-timeout", 5*time.Second, "transport RPC timeout")
	kvPort := flag.Int("kv-port", 0, "Machnet port of the KV front end (examples/kv request format); 0: none")
	election := flag.Duration("election-timeout", time.Second,
		"raft heartbeat and election timeout (the leader lease is half); longer rides out a loaded machine")
	flag.Parse()
	if *id == "" || *peers == "" || *port <= 0 || *port > 65535 {
		fmt.Fprintln(os.Stderr, "raft-node: --id, --port and --peers are required")
		os.Exit(2)
	}
	if *kvPort < 0 || *kvPort > 65535 || *kvPort == *port {
		fmt.Fprintln(os.Stderr, "raft-node: --kv-port must be 1..65535 and differ from --port (0: no KV front end)")
		os.Exit(2)
	}
	var servers []raft.Server
	for _, p := range strings.Split(*peers, ",") {
		kv := strings.SplitN(p, "=", 2)
		if len(kv) != 2 {
			fmt.Fprintf(os.Stderr, "raft-node: bad peer %q\n", p)
			os.Exit(2)
		}
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(kv[0]), Address: raft.ServerAddress(kv[1])})
	}
	trans, err := machnetraft.NewTransport(machnetraft.Config{Socket: *socket, LocalIP: *ip, Port: uint16(*port), Timeout: *timeout})
	if err != nil {
		fmt.Fprintf(os.Stderr, "raft-node: transport: %v\n", err)
		os.Exit(1)
	}
	conf := machnetraft.RaftConfig(raft.ServerID(*id), os.Stderr)
	if *election < 10*time.Millisecond {
		fmt.Fprintln(os.Stderr, "raft-node: --election-timeout must be at least 10ms")
		os.Exit(2)
	}
	conf.HeartbeatTimeout, conf.ElectionTimeout, conf.LeaderLeaseTimeout = *election, *election, *election/2
	if *kvPort != 0 {
		conf.MaxAppendEntries = machnetraft.KVMaxAppendEntries
	}
	node, err := machnetraft.StartNode(conf, trans, servers, true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "raft-node: %v\n", err)
		os.Exit(1)
	}
	if *kvPort != 0 {
		kvLog := hclog.New(&hclog.LoggerOptions{Name: "kv-" + *id, Level: hclog.Warn, Output: os.Stderr})
		cfg := machnetraft.KVServerConfig{Socket: *socket, LocalIP: *ip, Port: uint16(*kvPort), Logger: kvLog}
		if _, err := machnetraft.ServeKV(cfg, node.Raft, node.FSM); err != nil {
			fmt.Fprintf(os.Stderr, "raft-node: KV front end: %v\n", err)
			os.Exit(1)
		}
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		_, leader := node.Raft.LeaderWithID()
		writeJSON(w, status{
			ID: *id, State: node.Raft.State().String(), Leader: string(leader),
			Applied: node.FSM.Len(), LastIndex: node.Raft.LastIndex(),
			CommitIndex: node.Raft.Stats()["commit_index"], KVPort: *kvPort,
		})
	})
	mux.HandleFunc("/apply", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		cmd, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f := node.Raft.Apply(cmd, 10*time.Second)
		if err := f.Error(); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		if resp, ok := f.Response().(error); ok {
			http.Error(w, resp.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, map[string]uint64{"index": f.Index()})
	})
	mux.HandleFunc("/applied", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, node.FSM.Applied())
	})
	mux.HandleFunc("/dump", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(node.FSM.Dump())
	})
	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "raft-node: http: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("READY " + ln.Addr().String() + " " + strconv.Quote(string(trans.LocalAddr())))
	fmt.Fprintln(os.Stderr, http.Serve(ln, mux))
	os.Exit(1)
}

func writeJSON(w http.ResponseWriter, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
