package machnetraft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
)

// Entry is one applied log entry as the state machine saw it.
type Entry struct {
	Index uint64
	Term  uint64
	Data  []byte
}

// KV is the replicated state machine: an in-memory key-value map plus the list of every
// command it applied (the replicated log as seen by the FSM), so that tests can check that no
// committed entry is lost and that all nodes hold byte-identical state (Dump).
type KV struct {
	mu      sync.Mutex
	data    map[string][]byte
	applied []Entry
}

// NewKV returns an empty state machine.
func NewKV() *KV { return &KV{data: make(map[string][]byte)} }

var _ raft.FSM = (*KV)(nil)

// Command op codes (the first byte of every command).
const (
	opSet    = 1
	opDelete = 2
)

// SetCommand encodes "set key = value": op byte, 16-bit key length, key, value.
func SetCommand(key string, value []byte) []byte {
	out := make([]byte, 3+len(key)+len(value))
	out[0] = opSet
	binary.BigEndian.PutUint16(out[1:3], uint16(len(key)))
	copy(out[3:], key)
	copy(out[3+len(key):], value)
	return out
}

// DeleteCommand encodes "delete key": op byte, 16-bit key length, key. Applying it returns
// DeleteResult.
func DeleteCommand(key string) []byte {
	out := make([]byte, 3+len(key))
	out[0] = opDelete
	binary.BigEndian.PutUint16(out[1:3], uint16(len(key)))
	copy(out[3:], key)
	return out
}

// DeleteResult is what applying a DeleteCommand returns (raft.ApplyFuture.Response).
type DeleteResult struct {
	Existed bool // the key was present before the delete
}

// parseCommand decodes a command made by SetCommand or DeleteCommand (a delete has no value:
// trailing bytes are an error).
func parseCommand(cmd []byte) (op byte, key string, value []byte, err error) {
	if len(cmd) < 3 || (cmd[0] != opSet && cmd[0] != opDelete) {
		return 0, "", nil, errors.New("kv: unknown command")
	}
	kl := int(binary.BigEndian.Uint16(cmd[1:3]))
	if len(cmd) < 3+kl {
		return 0, "", nil, errors.New("kv: truncated command")
	}
	if cmd[0] == opDelete && len(cmd) != 3+kl {
		return 0, "", nil, errors.New("kv: trailing bytes after a delete")
	}
	return cmd[0], string(cmd[3 : 3+kl]), cmd[3+kl:], nil
}

// Apply implements raft.FSM. It returns the decoding error, nil for a set, or a DeleteResult.
func (kv *KV) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	data := append([]byte(nil), l.Data...)
	op, key, value, err := parseCommand(data)
	kv.mu.Lock()
	defer kv.mu.Unlock()
	kv.applied = append(kv.applied, Entry{Index: l.Index, Term: l.Term, Data: data})
	if err != nil {
		return err
	}
	if op == opDelete {
		_, existed := kv.data[key]
		delete(kv.data, key)
		return DeleteResult{Existed: existed}
	}
	kv.data[key] = value
	return nil
}

// Get returns the value of key.
func (kv *KV) Get(key string) ([]byte, bool) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	v, ok := kv.data[key]
	return v, ok
}

// Pair is one key and its value, as Scan returns them.
type Pair struct {
	Key   string
	Value []byte
}

// Scan returns up to limit entries whose key starts with prefix, in key order (byte-wise).
// Values are shared with the state machine: callers must not modify them.
func (kv *KV) Scan(prefix string, limit int) []Pair {
	kv.mu.Lock()
	keys := make([]string, 0)
	for k := range kv.data {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if len(keys) > limit {
		keys = keys[:limit]
	}
	out := make([]Pair, len(keys))
	for i, k := range keys {
		out[i] = Pair{Key: k, Value: kv.data[k]}
	}
	kv.mu.Unlock()
	return out
}

// Applied returns a copy of the applied entries in order.
func (kv *KV) Applied() []Entry {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return append([]Entry(nil), kv.applied...)
}

// Len is the number of applied command entries.
func (kv *KV) Len() int {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return len(kv.applied)
}

// Dump is a deterministic serialisation of the whole state (applied entries, then the map in
// key order). Nodes that applied the same log have byte-identical dumps; it is also the
// snapshot format.
func (kv *KV) Dump() []byte {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return dump(kv.applied, kv.data)
}

func dump(applied []Entry, data map[string][]byte) []byte {
	var b bytes.Buffer
	put := func(v uint64) {
		var tmp [8]byte
		binary.BigEndian.PutUint64(tmp[:], v)
		b.Write(tmp[:])
	}
	putBytes := func(p []byte) {
		put(uint64(len(p)))
		b.Write(p)
	}
	put(uint64(len(applied)))
	for _, e := range applied {
		put(e.Index)
		put(e.Term)
		putBytes(e.Data)
	}
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	put(uint64(len(keys)))
	for _, k := range keys {
		putBytes([]byte(k))
		putBytes(data[k])
	}
	return b.Bytes()
}

func undump(p []byte) ([]Entry, map[string][]byte, error) {
	r := bytes.NewReader(p)
	get := func() (uint64, error) {
		var tmp [8]byte
		if _, err := io.ReadFull(r, tmp[:]); err != nil {
			return 0, err
		}
		return binary.BigEndian.Uint64(tmp[:]), nil
	}
	getBytes := func() ([]byte, error) {
		n, err := get()
		if err != nil {
			return nil, err
		}
		if n > uint64(r.Len()) {
			return nil, io.ErrUnexpectedEOF
		}
		out := make([]byte, n)
		_, err = io.ReadFull(r, out)
		return out, err
	}
	n, err := get()
	if err != nil {
		return nil, nil, err
	}
	var applied []Entry
	for i := uint64(0); i < n; i++ {
		var e Entry
		if e.Index, err = get(); err != nil {
			return nil, nil, err
		}
		if e.Term, err = get(); err != nil {
			return nil, nil, err
		}
		if e.Data, err = getBytes(); err != nil {
			return nil, nil, err
		}
		applied = append(applied, e)
	}
	if n, err = get(); err != nil {
		return nil, nil, err
	}
	data := make(map[string][]byte, n)
	for i := uint64(0); i < n; i++ {
		k, err := getBytes()
		if err != nil {
			return nil, nil, err
		}
		v, err := getBytes()
		if err != nil {
			return nil, nil, err
		}
		data[string(k)] = v
	}
	if r.Len() != 0 {
		return nil, nil, fmt.Errorf("kv: %d trailing bytes in snapshot", r.Len())
	}
	return applied, data, nil
}

// Snapshot implements raft.FSM.
func (kv *KV) Snapshot() (raft.FSMSnapshot, error) {
	return snapshot(kv.Dump()), nil
}

// Restore implements raft.FSM.
func (kv *KV) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	p, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	applied, data, err := undump(p)
	if err != nil {
		return err
	}
	kv.mu.Lock()
	kv.applied, kv.data = applied, data
	kv.mu.Unlock()
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}
