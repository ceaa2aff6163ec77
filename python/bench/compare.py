"""Python client overhead versus the Rust client, in one run on the same sidecars.

Starts two `machnet` sidecars (127.0.0.1 and 127.0.0.2, kernel UDP, private sockets), the Rust
echo server on the first, then alternates ROUNDS times between `machnet-echo client` (Rust) and
`bench/echo_client.py` (Python, blocking `recv`, and with `--asyncio` also `recv_async`), all
attached to the second sidecar, 64 B messages, window 1. Prints a table and the ratio of the
medians of p50 RTT (goal: Python ≤ 1.10 × Rust)::

    python bench/compare.py [--duration 3] [--warmup 0.5] [--rounds 3] [--asyncio] [--json]

Needs the machnet package installed and the binaries built (see tests/harness.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from harness import ECHO_PORT, IP_A, IP_B, Proc, Sidecar, bin_dir, start_echo_server  # noqa: E402


def run_json(argv: List[str]) -> Dict[str, object]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({out.returncode}):\n{out.stderr}")
    result: Dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--asyncio", action="store_true", help="also measure recv_async")
    p.add_argument("--json", action="store_true", help="print every result as a JSON line")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="machnet-py-bench-"))
    procs: List[Proc] = []
    try:
        sa = Sidecar("a", IP_A, tmp)
        procs.append(sa)
        sb = Sidecar("b", IP_B, tmp)
        procs.append(sb)
        procs.append(start_echo_server(sa, tmp))
        common = [
            "--remote", IP_A, "--port", str(ECHO_PORT), "--size", str(a.size), "--window", "1",
            "--duration", str(a.duration), "--warmup", str(a.warmup), "--json",
        ]  # fmt: skip
        rust = [str(bin_dir() / "machnet-echo"), "client", "--socket", str(sb.sock), *common]
        python = [sys.executable, str(HERE / "echo_client.py"), "--socket", str(sb.sock), *common]
        runs: Dict[str, List[Dict[str, object]]] = {"rust": [], "python": []}
        if a.asyncio:
            runs["python-asyncio"] = []
        for _ in range(a.rounds):
            runs["rust"].append(run_json(rust))
            runs["python"].append(run_json(python))
            if a.asyncio:
                runs["python-asyncio"].append(run_json([*python, "--asyncio"]))
        print(f"{'client':16} {'round':>5} {'msgs/s':>9} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9}")
        p50: Dict[str, float] = {}
        for name, rs in runs.items():
            for k, r in enumerate(rs):
                t = r["rtt_us"]
                assert isinstance(t, dict)
                if a.json:
                    print(json.dumps({"client": name, **r}))
                print(
                    f"{name:16} {k:>5} {r['msgs_per_sec']:>9.0f} {t['p50']:>8.1f} "
                    f"{t['p99']:>8.1f} {t['p999']:>9.1f}"
                )
                if r.get("mismatches"):
                    print(f"{name}: {r['mismatches']} echoes differed", file=sys.stderr)
                    return 1
            p50[name] = statistics.median(float(r["rtt_us"]["p50"]) for r in rs)  # type: ignore[index]
        for name in runs:
            if name != "rust":
                print(
                    f"p50 RTT {name}/rust at {a.size} B, window 1 (median of {a.rounds} rounds): "
                    f"{p50[name]:.1f} / {p50['rust']:.1f} us = {p50[name] / p50['rust']:.3f}x "
                    f"(goal <= 1.10x)"
                )
        return 0
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
