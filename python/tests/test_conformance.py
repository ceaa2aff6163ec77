"""The cross-language conformance cases (``conformance/cases.json``; see conformance/README.md).

One test per case, in file order, against the apps the fixtures start: ``machnet-echo server``
(port 888) and ``machnet-kv server`` (port 900, the ``kv_server`` fixture) on sidecar a
(127.0.0.1); the client channels are on sidecar b (127.0.0.2). ``$MACHNET_CONFORMANCE_CASES``
overrides the path of the cases file. The README's environment variables map to fixtures here:
server IP ``IP_A``, echo port ``ECHO_PORT``, KV port ``kv_server``, server sidecar ``ma``, and
for app ``raft`` (the KV request format served by the leader of ``examples/raft``'s cluster)
``MACHNET_CONFORMANCE_RAFT_PORT`` ``raft_cluster`` (which needs ``$MACHNET_RAFT_NODE_BIN``).

Error names map to these exception classes (conformance/README.md, "Error names"):
``refused`` → :class:`machnet.ConnectionRefusedError`, ``invalid_argument`` →
:class:`machnet.InvalidArgumentError` (exactly: not its subclass MessageTooLargeError),
``too_large`` → :class:`machnet.MessageTooLargeError`, ``reset`` →
:class:`machnet.ConnectionResetError` (whose ``reason`` is also checked to be ``"reset"``),
``closed`` → :class:`machnet.FlowClosedError` (``reason`` ``"graceful"``). Every error's
``code`` is checked too: the code name each binding reports for the same condition.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

import pytest

import machnet
from harness import ECHO_PORT, IP_A, REPO

CASES_PATH = Path(
    os.environ.get("MACHNET_CONFORMANCE_CASES") or REPO / "conformance" / "cases.json"
)
CASES: List[Dict[str, Any]] = json.loads(CASES_PATH.read_text())["cases"]

#: Seconds any single receive or connect may take before the case fails.
WAIT = 60.0

ERRORS: Dict[str, Type[machnet.MachnetError]] = {
    "refused": machnet.ConnectionRefusedError,
    "invalid_argument": machnet.InvalidArgumentError,
    "too_large": machnet.MessageTooLargeError,
    "reset": machnet.ConnectionResetError,
    "closed": machnet.FlowClosedError,
}
#: The code name of each error name, the same in every binding (conformance/README.md).
CODES = {
    "refused": "ERR_MACHNET_CONNECTION_REFUSED",
    "invalid_argument": "ERR_MACHNET_INVALID_ARGUMENT",
    "too_large": "ERR_MACHNET_MESSAGE_TOO_LARGE",
    "reset": "ERR_MACHNET_FLOW_CLOSED",
    "closed": "ERR_MACHNET_FLOW_CLOSED",
}
#: The close reason a FlowError of each error name carries.
REASONS = {"reset": "reset", "closed": "graceful"}

KV_STATUS = {"ok": 0, "not_found": 1, "bad_request": 2, "server_error": 3}
KV_SET, KV_GET = 2, 1
#: The fixture that starts each KV-format app and yields its port.
KV_APPS = {"kv": "kv_server", "raft": "raft_cluster"}


def pattern(n: int) -> bytes:
    """The payload of size ``n``: byte ``i`` is ``(i * 7 + n) mod 256`` (period 256)."""
    period = bytes((i * 7 + n) % 256 for i in range(256))
    return (period * (n // 256 + 1))[:n]


def check_error(err: BaseException, name: str) -> None:
    cls = ERRORS[name]
    assert isinstance(err, cls), f"expected {cls.__name__} ({name}), got {type(err).__name__}: {err}"
    assert err.code == CODES[name], f"{name}: code {err.code!r} ({err})"
    if name == "invalid_argument":
        assert not isinstance(err, machnet.MessageTooLargeError), f"{name}: got {err!r}"
    if isinstance(err, machnet.FlowError):
        want = REASONS.get(name, name)
        assert err.reason == want, f"{name}: reason {err.reason!r} ({err})"


def recv_on(ch: machnet.Channel, flow: machnet.Flow, what: str) -> bytes:
    got_flow, data = ch.recv(timeout=WAIT)
    assert got_flow == flow, f"{what}: arrived on {got_flow}, sent on {flow}"
    return data


# ----- the cases -----


def do_echo(ch: machnet.Channel, case: Dict[str, Any]) -> None:
    flow = ch.connect(IP_A, ECHO_PORT, timeout=WAIT)
    for size in case["sizes"]:
        msg = pattern(size)
        ch.send(flow, msg)
        got = recv_on(ch, flow, f"size {size}")
        assert len(got) == size, f"size {size}: echo has {len(got)} bytes"
        assert got == msg, f"size {size}: echo differs"


def do_echo_pipelined(ch: machnet.Channel, case: Dict[str, Any]) -> None:
    size, count = case["size"], case["count"]
    flow = ch.connect(IP_A, ECHO_PORT, timeout=WAIT)
    base = pattern(size)
    msgs = [struct.pack("<I", k) + base[4:] for k in range(count)]
    for m in msgs:
        ch.send(flow, m)
    for k, m in enumerate(msgs):
        got = recv_on(ch, flow, f"message {k}")
        assert got == m, f"message {k}: got message {struct.unpack_from('<I', got)[0]} or other bytes"


def do_echo_flows(ch: machnet.Channel, case: Dict[str, Any]) -> None:
    n, size, count = case["flows"], case["size"], case["count"]
    flows = [ch.connect(IP_A, ECHO_PORT, timeout=WAIT) for _ in range(n)]
    assert len(set(flows)) == n, "connect returned the same flow twice"
    msg = pattern(size)
    for r in range(count):
        for f in flows:
            ch.send(f, msg)
        seen: List[machnet.Flow] = []
        for _ in range(n):
            f, data = ch.recv(timeout=WAIT)
            assert f in flows, f"round {r}: message on unknown flow {f}"
            assert f not in seen, f"round {r}: two messages on {f}"
            assert data == msg, f"round {r}: echo on {f} differs"
            seen.append(f)


def do_recv_timeout(ch: machnet.Channel, case: Dict[str, Any]) -> None:
    timeout = case["timeout_ms"] / 1000
    start = time.monotonic()
    with pytest.raises(machnet.TimeoutError):
        ch.recv(timeout=timeout)
    elapsed = time.monotonic() - start
    assert elapsed >= timeout, f"recv(timeout={timeout}) returned after {elapsed:.4f} s"
    # next_event reports the timeout as None, likewise not early.
    start = time.monotonic()
    assert ch.next_event(timeout=timeout) is None
    elapsed = time.monotonic() - start
    assert elapsed >= timeout, f"next_event(timeout={timeout}) returned after {elapsed:.4f} s"


def do_connect_error(ch: machnet.Channel, case: Dict[str, Any]) -> None:
    with pytest.raises(machnet.MachnetError) as e:
        ch.connect(IP_A, case["port"], timeout=WAIT)
    check_error(e.value, case["error"])


def do_send_error(ch: machnet.Channel, case: Dict[str, Any]) -> None:
    flow = ch.connect(IP_A, ECHO_PORT, timeout=WAIT)
    with pytest.raises(machnet.MachnetError) as e:
        ch.send(flow, pattern(case["size"]))
    check_error(e.value, case["error"])
    ch.send(flow, b"\x2a")
    assert recv_on(ch, flow, "after the failed send") == b"\x2a"
    assert ch.try_recv() is None, "the failed send was echoed"


def event_name(ev: machnet.Event) -> str:
    """The conformance name of a flow event (the ``event`` field of cases.json)."""
    if ev.kind == "closed" and ev.reason in ("reset", "timed_out", "refused"):
        return str(ev.reason)
    return str(ev.kind)


def do_peer_goes_away(ch: machnet.Channel, ma: machnet.Machnet, case: Dict[str, Any]) -> None:
    port, name = case["port"], case["error"]
    server = ma.open_channel()
    try:
        server.listen(port)
        flow = ch.connect(IP_A, port, timeout=WAIT)
        ch.send(flow, b"ping")
        sflow, data = server.recv(timeout=WAIT)
        assert data == b"ping"
        server.send(sflow, b"pong")
        assert recv_on(ch, flow, "reply") == b"pong"
    finally:
        server.abort()
    # The client flow ends: an event reports it with the close reason...
    deadline = time.monotonic() + WAIT
    ev: Optional[machnet.Event] = None
    while ev is None or ev.kind != "closed":
        left = deadline - time.monotonic()
        assert left > 0, "no 'closed' event for the client flow"
        ev = ch.next_event(timeout=left)
        assert ev is None or ev.kind in ("closed", "peer_closed"), f"unexpected event {ev}"
    assert ev.flow == flow
    assert ev.reason == name, f"closed with reason {ev.reason!r}, expected {name!r}"
    assert event_name(ev) == case["event"], f"event {ev}, expected {case['event']!r}"
    assert ch.flow_status(flow) == machnet.FlowStatus("closed", name)
    # ... and a later send fails with the error.
    with pytest.raises(machnet.MachnetError) as e:
        ch.send(flow, b"x")
    check_error(e.value, name)


def do_peer_closes_after_sending(
    ch: machnet.Channel, ma: machnet.Machnet, case: Dict[str, Any]
) -> None:
    port, sizes = case["port"], case["sizes"]
    # Leaving the block closes the server's channel gracefully, right after the sends.
    with ma.open_channel() as server:
        server.listen(port)
        flow = ch.connect(IP_A, port, timeout=WAIT)
        ch.send(flow, b"ping")
        sflow, data = server.recv(timeout=WAIT)
        assert data == b"ping"
        for n in sizes:
            server.send(sflow, pattern(n))
    # Every message, in order and intact; then the peer's close; nothing else.
    for n in sizes:
        ev = ch.next_event(timeout=WAIT)
        assert ev is not None, f"no message of {n} bytes"
        assert (ev.kind, ev.flow) == ("message", flow), f"{ev} instead of the message of {n} bytes"
        assert ev.data == pattern(n), f"the message of {n} bytes differs"
    ev = ch.next_event(timeout=WAIT)
    assert ev is not None and ev.flow == flow and event_name(ev) == case["event"], (
        f"{ev} instead of {case['event']}"
    )
    assert ch.flow_status(flow) == machnet.FlowStatus("peer_closed")
    # Closing our side ends the flow gracefully; a later send fails with the error.
    ch.close_flow(flow)
    ev = ch.next_event(timeout=WAIT)
    assert ev is not None and (ev.kind, ev.flow) == ("closed", flow), f"{ev} instead of closed"
    assert ev.reason == "graceful", f"closed with reason {ev.reason!r}"
    with pytest.raises(machnet.MachnetError) as e:
        ch.send(flow, b"x")
    check_error(e.value, case["error"])


def kv_response(ch: machnet.Channel, flow: machnet.Flow, what: str) -> Tuple[int, int, bytes]:
    data = recv_on(ch, flow, what)
    assert len(data) >= 5, f"{what}: response of {len(data)} bytes: {data.hex()}"
    status, rid = struct.unpack_from("<BI", data)
    return status, rid, data[5:]


def do_kv(ch: machnet.Channel, kv_port: int, case: Dict[str, Any]) -> None:
    flow = ch.connect(IP_A, kv_port, timeout=WAIT)
    for i, step in enumerate(case["steps"]):
        what = f"step {i} ({step['request'][:32]}...)"
        ch.send(flow, bytes.fromhex(step["request"]))
        status, rid, body = kv_response(ch, flow, what)
        shown = body[:200]
        assert status == KV_STATUS[step["status"]], (
            f"{what}: status {status}, expected {step['status']} (body {shown!r})"
        )
        assert rid == step["id"], f"{what}: id {rid}, expected {step['id']}"
        if "body" in step:
            assert body.hex() == step["body"], f"{what}: body {body.hex()}"
        if "body_contains" in step:
            text = body.decode("utf-8")
            assert step["body_contains"] in text, f"{what}: body {text!r}"


def do_kv_pipelined(ch: machnet.Channel, kv_port: int, case: Dict[str, Any]) -> None:
    count: int = case["count"]
    prefix: bytes = str(case["key_prefix"]).encode()
    flow = ch.connect(IP_A, kv_port, timeout=WAIT)

    def request(op: int, i: int, value: bytes = b"") -> bytes:
        key = prefix + str(i).encode()
        return struct.pack("<BIH", op, i, len(key)) + key + value

    for i in range(count):
        ch.send(flow, request(KV_SET, i, struct.pack("<I", i)))
    for i in range(count):
        status, rid, body = kv_response(ch, flow, f"SET {i}")
        assert (status, rid) == (0, i), f"SET {i}: status {status}, id {rid} ({body!r})"
    for i in range(count):
        ch.send(flow, request(KV_GET, i))
    for i in range(count):
        status, rid, body = kv_response(ch, flow, f"GET {i}")
        assert (status, rid) == (0, i), f"GET {i}: status {status}, id {rid} ({body!r})"
        assert body == struct.pack("<I", i), f"GET {i}: value {body.hex()}"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_conformance(
    case: Dict[str, Any], mb: machnet.Machnet, ma: machnet.Machnet, request: pytest.FixtureRequest
) -> None:
    do = case["do"]
    # Each case runs on a fresh channel of the client sidecar; closing it closes its flows.
    with mb.open_channel() as ch:
        if do == "echo":
            do_echo(ch, case)
        elif do == "echo_pipelined":
            do_echo_pipelined(ch, case)
        elif do == "echo_flows":
            do_echo_flows(ch, case)
        elif do == "recv_timeout":
            do_recv_timeout(ch, case)
        elif do == "connect_error":
            do_connect_error(ch, case)
        elif do == "send_error":
            do_send_error(ch, case)
        elif do == "peer_goes_away":
            do_peer_goes_away(ch, ma, case)
        elif do == "peer_closes_after_sending":
            do_peer_closes_after_sending(ch, ma, case)
        elif do == "kv":
            do_kv(ch, request.getfixturevalue(KV_APPS[case["app"]]), case)
        elif do == "kv_pipelined":
            do_kv_pipelined(ch, request.getfixturevalue(KV_APPS[case["app"]]), case)
        else:
            pytest.fail(f"case {case['name']}: unknown 'do' {do!r}")
