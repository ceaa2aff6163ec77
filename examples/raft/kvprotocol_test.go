package machnetraft

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"strings"
	"testing"
)

// TestParseKVRequest: well-formed requests round-trip; every malformed shape is refused with
// the text examples/kv sends (the conformance cases match on it).
func TestParseKVRequest(t *testing.T) {
	for _, req := range []KVRequest{
		{Op: KVGet, ID: 1, Key: []byte("k")},
		{Op: KVSet, ID: 2, Key: []byte("k"), Value: []byte("value")},
		{Op: KVSet, ID: 3, Key: []byte("k"), Value: []byte{}},
		{Op: KVDelete, ID: 4, Key: bytes.Repeat([]byte("x"), KVMaxKey)},
		{Op: KVScan, ID: 5, Key: []byte{}, Limit: KVMaxScan},
	} {
		got, err := ParseKVRequest(EncodeKVRequest(req))
		if err != nil {
			t.Fatalf("%+v: %v", req, err)
		}
		if got.Op != req.Op || got.ID != req.ID || !bytes.Equal(got.Key, req.Key) ||
			!bytes.Equal(got.Value, req.Value) || got.Limit != req.Limit {
			t.Fatalf("round trip: got %+v, want %+v", got, req)
		}
	}
	limit := func(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }
	hdr := func(op byte, keyLen int) []byte {
		b := []byte{op, 9, 0, 0, 0, 0, 0}
		binary.LittleEndian.PutUint16(b[5:], uint16(keyLen))
		return b
	}
	for _, c := range []struct {
		msg  []byte
		want string
	}{
		{[]byte{1, 2}, "request truncated: 2 bytes, need at least 7"},
		{append(hdr(KVGet, 200), 'x'), "key length 200 exceeds the message"},
		{append(hdr(77, 1), 'z'), "unknown operation 77"},
		{hdr(KVGet, 0), "empty key"},
		{append(hdr(KVSet, 0), 'v'), "empty key"},
		{hdr(KVDelete, 0), "empty key"},
		{append(hdr(KVGet, KVMaxKey+1), make([]byte, KVMaxKey+1)...), "key of 1025 bytes exceeds the limit of 1024"},
		{append(append(hdr(KVSet, 1), 'k'), make([]byte, KVMaxValue+1)...), "value of 1048577 bytes exceeds the limit of 1048576"},
		{append(hdr(KVGet, 1), 'k', '!'), "1 unexpected trailing bytes"},
		{append(hdr(KVDelete, 1), 'k', '!', '!'), "2 unexpected trailing bytes"},
		{append(hdr(KVScan, 0), 1, 0), "2 unexpected trailing bytes"},
		{append(append(hdr(KVScan, 0), limit(5)...), '!'), "1 unexpected trailing bytes"},
		{append(hdr(KVScan, 0), limit(0)...), "scan limit 0 outside 1..=1000"},
		{append(hdr(KVScan, 0), limit(1001)...), "scan limit 1001 outside 1..=1000"},
	} {
		_, err := ParseKVRequest(c.msg)
		if err == nil || err.Error() != c.want {
			t.Fatalf("message of %d bytes: got %v, want %q", len(c.msg), err, c.want)
		}
	}
	if KVRequestID([]byte{1, 2}) != 0 || KVRequestID(hdr(KVGet, 0)) != 9 {
		t.Fatal("KVRequestID")
	}
}

// TestParseKVRequestArbitraryBytes: random messages never panic the parser, and whatever it
// accepts re-encodes to the same bytes.
func TestParseKVRequestArbitraryBytes(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 20000; i++ {
		msg := make([]byte, r.Intn(40))
		r.Read(msg)
		if len(msg) > 0 && r.Intn(2) == 0 {
			msg[0] = byte(1 + r.Intn(4))
		}
		if len(msg) >= 7 && r.Intn(2) == 0 {
			binary.LittleEndian.PutUint16(msg[5:], uint16(r.Intn(len(msg)-6)))
		}
		req, err := ParseKVRequest(msg)
		if err == nil && !bytes.Equal(EncodeKVRequest(req), msg) {
			t.Fatalf("% x parsed as %+v but re-encodes differently", msg, req)
		}
	}
}

// TestKVScanResponse: the SCAN body layout, and truncation below the byte cap.
func TestKVScanResponse(t *testing.T) {
	got := KVScanResponse(7, []Pair{{"a", []byte("1")}, {"ab", nil}})
	want := []byte{0, 7, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 'a', 1, 0, 0, 0, '1', 2, 0, 'a', 'b', 0, 0, 0, 0}
	if !bytes.Equal(got, want) {
		t.Fatalf("got % x\nwant % x", got, want)
	}
	big := make([]Pair, 5)
	for i := range big {
		big[i] = Pair{strings.Repeat("k", i+1), make([]byte, 1<<20)}
	}
	resp := KVScanResponse(1, big)
	if len(resp) > KVMaxScanBytes || resp[5] != 1 || binary.LittleEndian.Uint32(resp[6:]) != 3 {
		t.Fatalf("truncation: %d bytes, flag %d, count %d", len(resp), resp[5], binary.LittleEndian.Uint32(resp[6:]))
	}
}
