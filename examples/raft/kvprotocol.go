package machnetraft

// The KV request/response format of examples/kv (byte layout in examples/kv/README.md), which
// the KV front end (kvserver.go) speaks. The reference implementation is Rust
// (examples/kv/src/protocol.rs) and cannot be linked into Go, so this file mirrors it: the same
// limits, the same checks in the same order and the same error texts, so that a client (and
// the conformance cases) cannot tell the two servers apart. Nothing here trusts the sender.

import (
	"encoding/binary"
	"fmt"
)

// KV request limits (as in examples/kv).
const (
	KVMaxKey       = 1024    // longest key (and SCAN prefix)
	KVMaxValue     = 1 << 20 // longest value
	KVMaxScan      = 1000    // most entries one SCAN may ask for
	KVMaxScanBytes = 4 << 20 // a SCAN response stops before exceeding this many bytes
	kvHeaderLen    = 7       // op, id, key length
	kvRespHeader   = 5       // status, id
	// KVMaxRequest is the longest well-formed request (a SET of the longest key and value).
	KVMaxRequest = kvHeaderLen + KVMaxKey + KVMaxValue
)

// KV operation codes.
const (
	KVGet    byte = 1
	KVSet    byte = 2
	KVDelete byte = 3
	KVScan   byte = 4
)

// KVStatus is a response's status byte.
type KVStatus byte

// Response statuses.
const (
	KVOK          KVStatus = 0 // done; the body depends on the operation
	KVNotFound    KVStatus = 1 // GET or DELETE of a missing key (empty body)
	KVBadRequest  KVStatus = 2 // malformed request; the body is a UTF-8 explanation
	KVServerError KVStatus = 3 // the server could not do it; the body is a UTF-8 explanation
)

// KVRequest is one parsed request. Key and Value alias the message they were parsed from.
type KVRequest struct {
	Op    byte
	ID    uint32
	Key   []byte // SCAN: the prefix
	Value []byte // SET only
	Limit uint32 // SCAN only
}

// KVRequestID is the id of msg, or 0 if msg is too short to carry one (what a BAD_REQUEST
// answer echoes).
func KVRequestID(msg []byte) uint32 {
	if len(msg) < 5 {
		return 0
	}
	return binary.LittleEndian.Uint32(msg[1:5])
}

// ParseKVRequest parses one request message. The error text is what the server sends back
// with KVBadRequest.
func ParseKVRequest(msg []byte) (KVRequest, error) {
	if len(msg) < kvHeaderLen {
		return KVRequest{}, fmt.Errorf("request truncated: %d bytes, need at least %d", len(msg), kvHeaderLen)
	}
	req := KVRequest{Op: msg[0], ID: KVRequestID(msg)}
	keyLen := int(binary.LittleEndian.Uint16(msg[5:7]))
	rest := msg[kvHeaderLen:]
	if keyLen > len(rest) {
		return KVRequest{}, fmt.Errorf("key length %d exceeds the message", keyLen)
	}
	if keyLen > KVMaxKey {
		return KVRequest{}, fmt.Errorf("key of %d bytes exceeds the limit of %d", keyLen, KVMaxKey)
	}
	req.Key, rest = rest[:keyLen], rest[keyLen:]
	switch req.Op {
	case KVGet, KVDelete:
		if keyLen == 0 {
			return KVRequest{}, fmt.Errorf("empty key")
		}
		if len(rest) != 0 {
			return KVRequest{}, fmt.Errorf("%d unexpected trailing bytes", len(rest))
		}
	case KVSet:
		if keyLen == 0 {
			return KVRequest{}, fmt.Errorf("empty key")
		}
		if len(rest) > KVMaxValue {
			return KVRequest{}, fmt.Errorf("value of %d bytes exceeds the limit of %d", len(rest), KVMaxValue)
		}
		req.Value = rest
	case KVScan:
		if len(rest) < 4 {
			return KVRequest{}, fmt.Errorf("%d unexpected trailing bytes", len(rest))
		}
		if len(rest) > 4 {
			return KVRequest{}, fmt.Errorf("%d unexpected trailing bytes", len(rest)-4)
		}
		req.Limit = binary.LittleEndian.Uint32(rest)
		if req.Limit == 0 || req.Limit > KVMaxScan {
			return KVRequest{}, fmt.Errorf("scan limit %d outside 1..=%d", req.Limit, KVMaxScan)
		}
	default:
		return KVRequest{}, fmt.Errorf("unknown operation %d", req.Op)
	}
	return req, nil
}

// EncodeKVRequest is the inverse of ParseKVRequest (for clients and tests).
func EncodeKVRequest(req KVRequest) []byte {
	out := make([]byte, kvHeaderLen, kvHeaderLen+len(req.Key)+len(req.Value)+4)
	out[0] = req.Op
	binary.LittleEndian.PutUint32(out[1:5], req.ID)
	binary.LittleEndian.PutUint16(out[5:7], uint16(len(req.Key)))
	out = append(out, req.Key...)
	switch req.Op {
	case KVSet:
		out = append(out, req.Value...)
	case KVScan:
		out = binary.LittleEndian.AppendUint32(out, req.Limit)
	}
	return out
}

// KVResponse builds a response: status, id, body.
func KVResponse(status KVStatus, id uint32, body []byte) []byte {
	out := make([]byte, kvRespHeader, kvRespHeader+len(body))
	out[0] = byte(status)
	binary.LittleEndian.PutUint32(out[1:5], id)
	return append(out, body...)
}

// KVScanResponse builds a SCAN's OK response from pairs (in key order): u8 truncated, u32
// count, then per entry u16 key length, key, u32 value length, value. It stops before the
// response would exceed KVMaxScanBytes and then sets the truncated flag.
func KVScanResponse(id uint32, pairs []Pair) []byte {
	out := KVResponse(KVOK, id, []byte{0, 0, 0, 0, 0})
	count := uint32(0)
	for _, p := range pairs {
		if len(out)+6+len(p.Key)+len(p.Value) > KVMaxScanBytes {
			out[kvRespHeader] = 1
			break
		}
		out = binary.LittleEndian.AppendUint16(out, uint16(len(p.Key)))
		out = append(out, p.Key...)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(p.Value)))
		out = append(out, p.Value...)
		count++
	}
	binary.LittleEndian.PutUint32(out[kvRespHeader+1:], count)
	return out
}
