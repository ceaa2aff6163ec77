"""Echo benchmark client in Python, the counterpart of `machnet-echo client`.

Keeps WINDOW messages of SIZE bytes outstanding on one flow to a `machnet-echo server`, verifies
every echo byte for byte, and reports messages/s and round-trip-time percentiles — as one JSON
line with the same fields as `machnet-echo client --json` (``mode`` is ``"python"`` or
``"python-asyncio"``)::

    python bench/echo_client.py --socket /run/machnet/machnet.sock --remote 10.0.0.1 --port 888 \\
        --size 64 --window 1 --duration 3 --warmup 0.5 [--asyncio] [--json]

Exits 1 if an echo differed from what was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

import machnet


def percentile(sorted_ns: List[int], q: float) -> float:
    """The ``q`` quantile (nearest rank) of sorted nanosecond samples, in microseconds."""
    if not sorted_ns:
        return 0.0
    idx = min(len(sorted_ns) - 1, max(0, int(q * len(sorted_ns) + 0.5) - 1))
    return sorted_ns[idx] / 1000.0


def report(
    mode: str, size: int, window: int, elapsed: float, rtts: List[int], mismatches: int
) -> Dict[str, object]:
    rtts.sort()
    rate = len(rtts) / elapsed if elapsed > 0 else 0.0
    return {
        "mode": mode,
        "size": size,
        "window": window,
        "flows": 1,
        "duration_s": elapsed,
        "messages": len(rtts),
        "mismatches": mismatches,
        "msgs_per_sec": rate,
        "gbit_per_sec": rate * size * 8 / 1e9,
        "rtt_us": {
            "p50": percentile(rtts, 0.50),
            "p90": percentile(rtts, 0.90),
            "p99": percentile(rtts, 0.99),
            "p999": percentile(rtts, 0.999),
            "max": rtts[-1] / 1000.0 if rtts else 0.0,
        },
    }


def message(i: int, size: int) -> bytes:
    """Message ``i``: its index in the first bytes, the rest a pattern (checked on return)."""
    head = i.to_bytes(8, "little")
    body = (head * (size // 8 + 1))[:size]
    return body


class Load:
    """WINDOW messages outstanding on one flow: timestamps, verification, RTT samples."""

    def __init__(self, ch: machnet.Channel, flow: machnet.Flow, a: argparse.Namespace) -> None:
        self.ch, self.flow, self.size = ch, flow, a.size
        self.warm_end = time.perf_counter_ns() + int(a.warmup * 1e9)
        self.end = self.warm_end + int(a.duration * 1e9)
        self.measured_start = 0
        self.rtts: List[int] = []
        self.mismatches = 0
        self.outstanding: Deque[Tuple[int, bytes]] = deque()
        self.sent = 0
        for _ in range(a.window):
            self.send_next()

    def send_next(self) -> None:
        msg = message(self.sent, self.size)
        self.sent += 1
        self.outstanding.append((time.perf_counter_ns(), msg))
        self.ch.send(self.flow, msg)

    def on_echo(self, data: bytes) -> bool:
        """Accounts for one echo; returns whether to go on (then the next message is sent)."""
        t = time.perf_counter_ns()
        sent_at, msg = self.outstanding.popleft()
        if data != msg:
            self.mismatches += 1
        if t >= self.warm_end:
            if not self.measured_start:
                self.measured_start = t
            if t >= self.end:
                return False
            self.rtts.append(t - sent_at)
        self.send_next()
        return True

    def on_drained(self, data: bytes) -> None:
        """Accounts for an echo still outstanding at the end."""
        if data != self.outstanding.popleft()[1]:
            self.mismatches += 1

    def report(self, mode: str, window: int) -> Dict[str, object]:
        elapsed = (self.end - self.measured_start) / 1e9
        return report(mode, self.size, window, elapsed, self.rtts, self.mismatches)


def run_sync(ch: machnet.Channel, flow: machnet.Flow, a: argparse.Namespace) -> Dict[str, object]:
    load = Load(ch, flow, a)
    while load.on_echo(ch.recv()[1]):
        pass
    while load.outstanding:  # drain, so that the flow ends clean
        load.on_drained(ch.recv(timeout=30)[1])
    return load.report("python", a.window)


async def run_async(
    ch: machnet.Channel, flow: machnet.Flow, a: argparse.Namespace
) -> Dict[str, object]:
    load = Load(ch, flow, a)
    while load.on_echo((await ch.recv_async())[1]):
        pass
    while load.outstanding:
        load.on_drained((await ch.recv_async(timeout=30))[1])
    return load.report("python-asyncio", a.window)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--socket", default=None, help="sidecar control socket (default: $MACHNET_SOCKET or the default path)")
    p.add_argument("--remote", required=True, help="the echo server's IPv4 address")
    p.add_argument("--port", type=int, required=True, help="the echo server's Machnet port")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    p.add_argument("--window", type=int, default=1, help="messages outstanding (default 1)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring (default 1)")
    p.add_argument("--busy-poll-us", type=int, default=0, help="spin this long before sleeping")
    p.add_argument("--asyncio", action="store_true", help="receive with await recv_async()")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    a = p.parse_args(argv)
    if a.size < 8 or a.window < 1 or a.duration <= 0 or a.warmup < 0:
        p.error("need --size >= 8, --window >= 1, --duration > 0, --warmup >= 0")
    with machnet.attach(a.socket or os.environ.get(machnet.SOCKET_ENV)) as m, m.open_channel() as ch:
        if a.busy_poll_us:
            ch.set_busy_poll(a.busy_poll_us / 1e6)
        flow = ch.connect(a.remote, a.port)
        if a.asyncio:
            r = asyncio.run(run_async(ch, flow, a))
        else:
            r = run_sync(ch, flow, a)
        ch.close_flow(flow)
    if a.json:
        print(json.dumps(r))
    else:
        t = r["rtt_us"]
        assert isinstance(t, dict)
        print(
            f"{r['mode']}: {r['messages']} round trips of {a.size} B (window {a.window}) in "
            f"{r['duration_s']:.2f} s: {r['msgs_per_sec']:.0f} msgs/s, RTT p50 {t['p50']:.1f} us, "
            f"p99 {t['p99']:.1f} us, p99.9 {t['p999']:.1f} us; {r['mismatches']} mismatches"
        )
    return 1 if r["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
