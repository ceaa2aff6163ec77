package machnetraft

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nodeProc is one cmd/raft-node process.
type nodeProc struct {
	id   string
	cmd  *exec.Cmd
	http string // control address
	dead bool
}

type nodeStatus struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	Leader  string `json:"leader"`
	Applied int    `json:"applied"`
}

var httpc = &http.Client{Timeout: 15 * time.Second}

func (n *nodeProc) status() (nodeStatus, error) {
	var s nodeStatus
	resp, err := httpc.Get("http://" + n.http + "/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

func (n *nodeProc) get(path string) ([]byte, error) {
	resp, err := httpc.Get("http://" + n.http + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s", n.id, path, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func (n *nodeProc) apply(cmd []byte) error {
	resp, err := httpc.Post("http://"+n.http+"/apply", "application/octet-stream", bytes.NewReader(cmd))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("apply on %s: %s: %s", n.id, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

func nodeBinary(t *testing.T) string {
	if bin := os.Getenv("MACHNET_RAFT_NODE_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "raft-node")
	out, err := exec.Command("go", "build", "-o", bin, "./cmd/raft-node").CombinedOutput()
	if err != nil {
		t.Fatalf("go build ./cmd/raft-node: %v\n%s", err, out)
	}
	return bin
}

func startProcs(t *testing.T, sc []sidecar) []*nodeProc {
	t.Helper()
	bin := nodeBinary(t)
	ports := make([]uint16, len(sc))
	var peers []string
	for i := range sc {
		ports[i] = port()
		peers = append(peers, fmt.Sprintf("p%d=%s:%d", i+1, sc[i].ip, ports[i]))
	}
	logDir := t.TempDir()
	var procs []*nodeProc
	t.Cleanup(func() {
		for _, p := range procs {
			if !p.dead {
				_ = p.cmd.Process.Kill()
				_ = p.cmd.Wait()
			}
			if t.Failed() {
				data, _ := os.ReadFile(filepath.Join(logDir, p.id+".log"))
				t.Logf("---- %s stderr ----\n%s", p.id, data)
			}
		}
	})
	for i := range sc {
		id := fmt.Sprintf("p%d", i+1)
		cmd := exec.Command(bin, "--id", id, "--socket", sc[i].socket, "--ip", sc[i].ip,
			"--port", fmt.Sprint(ports[i]), "--peers", strings.Join(peers, ","), "--rpc-timeout", "3s")
		logf, err := os.Create(filepath.Join(logDir, id+".log"))
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		cmd.Stderr = logf
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		p := &nodeProc{id: id, cmd: cmd}
		procs = append(procs, p)
		ready := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "READY" {
					ready <- f[1]
				}
			}
			close(ready)
		}()
		select {
		case addr, ok := <-ready:
			if !ok {
				t.Fatalf("%s exited before it was ready", id)
			}
			p.http = addr
		case <-time.After(30 * time.Second):
			t.Fatalf("%s not ready after 30s", id)
		}
	}
	return procs
}

// waitProcLeader waits until every process in procs reports the same leader, one of procs.
func waitProcLeader(t *testing.T, procs []*nodeProc) *nodeProc {
	t.Helper()
	deadline := time.Now().Add(electionWait)
	for time.Now().Before(deadline) {
		var leader string
		agree := true
		for _, p := range procs {
			s, err := p.status()
			if err != nil || s.Leader == "" || (leader != "" && s.Leader != leader) {
				agree = false
				break
			}
			leader = s.Leader
		}
		if agree {
			for _, p := range procs {
				if p.id == leader {
					if s, err := p.status(); err == nil && s.State == "Leader" {
						return p
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no agreed leader among %d processes after %v", len(procs), electionWait)
	return nil
}

func waitProcApplied(t *testing.T, procs []*nodeProc, n int) {
	t.Helper()
	deadline := time.Now().Add(applyWait)
	for {
		behind := ""
		for _, p := range procs {
			s, err := p.status()
			if err != nil || s.Applied < n {
				behind += fmt.Sprintf(" %s=%d(%v)", p.id, s.Applied, err)
			}
		}
		if behind == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still short of %d applied entries:%s", applyWait, n, behind)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkProcLog fails unless the process applied exactly want (byte for byte, in order).
func checkProcLog(t *testing.T, p *nodeProc, want [][]byte) {
	t.Helper()
	raw, err := p.get("/applied")
	if err != nil {
		t.Fatal(err)
	}
	var got []Entry
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%s applied %d entries, want %d", p.id, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i].Data, want[i]) {
			t.Fatalf("%s: entry %d (index %d) differs from the acknowledged command", p.id, i, got[i].Index)
		}
	}
}

// TestKillLeaderProcess runs each node as its own process (cmd/raft-node) on its own sidecar.
// Commands acknowledged by the leader (committed) are recorded; the leader's process is then
// SIGKILLed right away, without waiting for the followers to apply. The two survivors must
// elect a new leader, hold every acknowledged command (in order, byte for byte), commit new
// ones, and end with byte-identical state.
func TestKillLeaderProcess(t *testing.T) {
	sc := sidecars(t)
	r := rng(t)
	procs := startProcs(t, sc)
	leader := waitProcLeader(t, procs)
	t.Logf("leader %s", leader.id)

	acked := commands(r, "a", 150, 80)
	for i, c := range acked {
		if err := leader.apply(c); err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
	}
	if err := leader.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = leader.cmd.Wait()
	leader.dead = true
	killedAt := time.Now()

	var rest []*nodeProc
	for _, p := range procs {
		if p != leader {
			rest = append(rest, p)
		}
	}
	newLeader := waitProcLeader(t, rest)
	t.Logf("killed %s; new leader %s after %v", leader.id, newLeader.id, time.Since(killedAt).Round(time.Millisecond))

	more := commands(r, "b", 50, 80)
	for i, c := range more {
		if err := newLeader.apply(c); err != nil {
			t.Fatalf("command %d after the kill: %v", i, err)
		}
	}
	all := append(append([][]byte(nil), acked...), more...)
	waitProcApplied(t, rest, len(all))
	for _, p := range rest {
		checkProcLog(t, p, all)
	}
	d0, err := rest[0].get("/dump")
	if err != nil {
		t.Fatal(err)
	}
	d1, err := rest[1].get("/dump")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d0, d1) {
		t.Fatalf("state of %s (%d bytes) differs from %s (%d bytes)", rest[0].id, len(d0), rest[1].id, len(d1))
	}
}
