#!/usr/bin/env python3
"""Writes the seed inputs of the channel fuzz targets (ci/fuzz.sh):

  machnet-channel/fuzz/seeds-ring_consumer/     ring memory with valid, wrapped and bad records
  machnet-channel/fuzz/seeds-control_messages/  every control request and response
  machnet-sidecar/fuzz/seeds-channel_engine/ operation sequences: connect, send, receive, close,
                                             accept, detach, full rings, hostile indices

The byte encoding follows the targets' use of `arbitrary::Unstructured` (1.x): `int_in_range`
reads as many bytes as the range's width needs, big-endian, modulo the range size; fixed-size
integers are little-endian; a bool is a byte's low bit. Run from anywhere: `python3 ci/fuzz-seeds.py`.
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Record kinds (machnet-channel/src/record.rs).
CONNECT, SEND, CLOSE, ABORT, MESSAGE = 1, 2, 3, 4, 67


def write(dir_, name, data):
    path = os.path.join(ROOT, dir_)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)


def header(length, kind, flow=0, aux=0, flags=0):
    return struct.pack("<IBBxxII", length, kind, flags, flow, aux)


def record(length, kind, payload=b"", flow=0, aux=0):
    body = header(length, kind, flow, aux) + payload
    return body + b"\0" * (-len(body) % 8)


# --- ring_consumer: capacity byte, start (u32), max payload (2 bytes), data area, steps ---
def ring_input(cap_units, start, area_at_start, steps):
    cap = 8 * cap_units
    area = bytearray(cap)
    for i, b in enumerate(area_at_start):
        area[(start + i) % cap] = b
    return bytes([cap_units - 1]) + struct.pack("<I", start) + struct.pack(">H", 2048) + bytes(area) + steps


def publish_ahead(n):  # step 1: tail = position + n (two bytes for rings of 128 bytes or more)
    return bytes([1]) + struct.pack(">H", n)


recs = record(5, SEND, b"hello", flow=1) + record(6, CONNECT, b"\x0a\0\0\x02\x50\0", aux=7) + record(0, CLOSE, flow=1)
write("machnet-channel/fuzz/seeds-ring_consumer", "three_records", ring_input(16, 0, recs, publish_ahead(len(recs))))
wrapped = record(20, SEND, bytes(range(20)), flow=2) + record(0, ABORT, flow=2)
write("machnet-channel/fuzz/seeds-ring_consumer", "wrapped_record", ring_input(16, 100, wrapped, publish_ahead(len(wrapped))))
bad = record(4000, SEND, flow=1)
write("machnet-channel/fuzz/seeds-ring_consumer", "bad_length_then_bad_tail",
      ring_input(16, 0, bad, publish_ahead(16) + bytes([2]) + struct.pack("<Q", 1 << 63)))

# --- control_messages: JSON text ---
controls = {
    "hello": {"op": "hello", "version": 1, "client": "rust-client"},
    "open_channel": {"op": "open_channel", "engine": 0},
    "open_channel_any": {"op": "open_channel", "engine": None},
    "listen": {"op": "listen", "channel": 1, "port": 80},
    "unlisten": {"op": "unlisten", "channel": 1, "port": 80},
    "close_channel": {"op": "close_channel", "channel": 1, "abort": True},
    "resp_hello": {"op": "hello", "version": 1, "local_ip": "10.0.0.1", "engines": 2, "max_message_len": 8388608},
    "resp_channel_opened": {"op": "channel_opened", "channel": 3, "engine": 1, "len": 2203648},
    "resp_ok": {"op": "ok"},
    "resp_error": {"op": "error", "code": "port_in_use", "message": "port 80 is in use"},
    "stats": {"op": "stats", "max_flows": 10, "max_channels": 2},
    "resp_stats": {"op": "stats", "stats": {"version": 1, "engines": [{"engine": 0, "rx_packets": 5}], "flows": [], "flows_omitted": 0}},
    # Numbers past u64 parse as floats: they must print and parse back to the same value.
    "resp_stats_large_number": {"op": "stats", "stats": {"version": 118446744073709551616, "srtt": 0.1, "x": 1.1844674407370957e+20}},
    "resp_invalid_request": {"op": "error", "code": "invalid_request", "message": "max_flows 0 is out of range"},
}
for name, msg in controls.items():
    write("machnet-channel/fuzz/seeds-control_messages", name, json.dumps(msg, separators=(",", ":")).encode())

# --- channel_engine: operations (see `Harness::op`) ---
def connect(aux=11):
    return bytes([1, 1]) + struct.pack("<I", aux)


def request(kind_index, flow, length, fill=0x41):  # op 0; kind index: Connect, Send, Close, Abort
    return bytes([0, kind_index, flow]) + struct.pack(">H", length) + bytes([fill])


CONSUME, SHUTTLE, FLUSH = bytes([9]), bytes([11]), bytes([12])
READ = bytes([13, 31])  # read up to 32 notifications


def peer_send(length):  # op 15 with one peer flow: send `length` bytes on it
    return bytes([15, 2]) + struct.pack(">H", length - 1)


def cycle():
    return CONSUME + SHUTTLE + FLUSH + READ


opened = connect() + cycle()
write("machnet-sidecar/fuzz/seeds-channel_engine", "connect_send_close",
      opened + request(1, 1, 100) + cycle() + peer_send(200) + cycle() + request(2, 1, 0) + cycle())
write("machnet-sidecar/fuzz/seeds-channel_engine", "accept_and_receive",
      bytes([15]) + FLUSH + READ + peer_send(1000) * 6 + FLUSH + READ + bytes([14, 0x4e, 0x1f]) + FLUSH + READ)
write("machnet-sidecar/fuzz/seeds-channel_engine", "full_rings_then_detach",
      opened + (request(1, 1, 1000) + CONSUME) * 5 + peer_send(1000) * 8 + FLUSH + bytes([16]) + READ
      + bytes([17, 0]) + CONSUME + SHUTTLE)
write("machnet-sidecar/fuzz/seeds-channel_engine", "hostile_indices",
      opened + bytes([5, 0x10, 0x40, 1]) + CONSUME + bytes([7, 1, 0x20, 0x00]) + FLUSH
      + bytes([3]) + struct.pack("<I", 9) + bytes([MESSAGE, 0, 0, 0, 1]) + struct.pack("<I", 0) + CONSUME)
