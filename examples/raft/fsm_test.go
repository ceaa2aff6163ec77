package machnetraft

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// TestKVDeleteAndScan: DeleteCommand removes a key and reports whether it existed; Scan lists
// a prefix in key order up to its limit; malformed commands are refused but still logged.
func TestKVDeleteAndScan(t *testing.T) {
	kv := NewKV()
	idx := uint64(0)
	apply := func(cmd []byte) interface{} {
		idx++
		return kv.Apply(&raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: cmd})
	}
	for _, k := range []string{"user:2", "user:1", "user:10", "other"} {
		if r := apply(SetCommand(k, []byte("v-"+k))); r != nil {
			t.Fatalf("set %s: %v", k, r)
		}
	}
	scan := kv.Scan("user:", 10)
	var keys []string
	for _, p := range scan {
		keys = append(keys, p.Key)
		if !bytes.Equal(p.Value, []byte("v-"+p.Key)) {
			t.Fatalf("value of %s: %q", p.Key, p.Value)
		}
	}
	if want := "user:1 user:10 user:2"; strings.Join(keys, " ") != want {
		t.Fatalf("scan: %q, want %q", strings.Join(keys, " "), want)
	}
	if got := kv.Scan("user:", 2); len(got) != 2 || got[1].Key != "user:10" {
		t.Fatalf("scan limit: %+v", got)
	}
	if got := kv.Scan("", 10); len(got) != 4 {
		t.Fatalf("empty prefix: %d entries", len(got))
	}
	if r := apply(DeleteCommand("user:1")); r != (DeleteResult{Existed: true}) {
		t.Fatalf("delete: %v", r)
	}
	if r := apply(DeleteCommand("user:1")); r != (DeleteResult{Existed: false}) {
		t.Fatalf("delete again: %v", r)
	}
	if _, ok := kv.Get("user:1"); ok {
		t.Fatal("deleted key still there")
	}
	for _, bad := range [][]byte{{9, 0, 1, 'k'}, {opDelete, 0, 5, 'k'}, append(DeleteCommand("k"), '!'), {opSet}} {
		if _, ok := apply(bad).(error); !ok {
			t.Fatalf("% x accepted", bad)
		}
	}
	if kv.Len() != 10 {
		t.Fatalf("applied %d entries, want 10 (refused ones are logged too)", kv.Len())
	}
	// The snapshot format carries deletes: a restored copy is byte-identical.
	other := NewKV()
	if err := other.Restore(nopCloser{bytes.NewReader(kv.Dump())}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(other.Dump(), kv.Dump()) {
		t.Fatal("restored state differs")
	}
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }
