"""Starting real sidecars, the Rust echo and KV servers and the Raft cluster (used by the tests
and by bench/compare.py).

Binaries come from ``$MACHNET_BIN_DIR`` (default: ``$CARGO_TARGET_DIR/release`` or the
repository's ``target/release``); build them with
``cargo build --release -p machnet-sidecar -p machnet-echo -p machnet-kv``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

import machnet

ECHO_PORT = 888
#: Machnet port of `machnet-kv server` (the conformance cases' KV app).
KV_PORT = 900
IP_A = "127.0.0.1"
IP_B = "127.0.0.2"
IP_C = "127.0.0.3"
REPO = Path(__file__).resolve().parents[2]


def bin_dir() -> Path:
    env = os.environ.get("MACHNET_BIN_DIR")
    if env:
        return Path(env)
    target = os.environ.get("CARGO_TARGET_DIR")
    return (Path(target) if target else REPO / "target") / "release"


def free_udp_pool(ips: List[str], count: int) -> int:
    """A base port such that ``base .. base+count`` is free on every address of ``ips``."""
    rng = random.Random(os.getpid() ^ int(time.time() * 1000))
    for _ in range(1000):
        base = rng.randrange(20000, 45000 - count)
        socks: List[socket.socket] = []
        try:
            for ip in ips:
                for port in range(base, base + count):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append(s)
                    s.bind((ip, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port range found")


_pool: List[int] = []


def udp_pool_base() -> int:
    """The UDP port pool of every sidecar of this run: RSS-- sprays connection setup over the
    peer's pool assuming it equals its own, so all sidecars share one (free on all addresses)."""
    if not _pool:
        _pool.append(free_udp_pool([IP_A, IP_B, IP_C], 8))
    return _pool[0]


class Proc:
    """A child process with its log file; stopped (SIGTERM, then SIGKILL) by :meth:`stop`."""

    def __init__(self, name: str, argv: List[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._logf = open(log, "wb")
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> Optional[int]:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._logf.close()
        return self.popen.returncode


class Sidecar(Proc):
    """A running sidecar; ``sock`` is its control socket."""

    def __init__(
        self, name: str, ip: str, tmp: Path, engines: int = 1, from_wheel: bool = False
    ) -> None:
        self.ip = ip
        self.sock = tmp / f"{name}.sock"
        base = udp_pool_base()
        flags = [
            "--local-ip", ip,
            "--engines", str(engines),
            "--control-socket", str(self.sock),
            "--allow-user", str(os.getuid()),
            "--udp-port-base", str(base),
            "--udp-port-count", "8",
            "--stats-interval", "0",
        ]  # fmt: skip
        if from_wheel:
            argv = [sys.executable, "-m", "machnet", "sidecar", *flags]
        else:
            argv = [str(bin_dir() / "machnet"), *flags]
        super().__init__(name, argv, tmp / f"{name}.log")
        self.wait_ready()

    def wait_ready(self) -> None:
        name = self.name
        deadline = time.monotonic() + 20
        while True:
            if not self.alive():
                raise RuntimeError(f"sidecar {name} exited early:\n{self.log_text()}")
            if self.sock.exists():
                try:
                    machnet.attach(self.sock).close()
                    break
                except machnet.SidecarNotFoundError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sidecar {name} never listened:\n{self.log_text()}")
            time.sleep(0.02)


def start_echo_server(sidecar: Sidecar, tmp: Path, port: int = ECHO_PORT) -> Proc:
    """`machnet-echo server` attached to ``sidecar``, listening on ``port`` once this returns."""
    echo = Proc(
        "echo",
        [str(bin_dir() / "machnet-echo"), "server", "--socket", str(sidecar.sock), "--port", str(port)],
        tmp / "echo.log",
    )
    # The server prints its banner after it listens.
    deadline = time.monotonic() + 20
    while "listening on" not in echo.log_text():
        if not echo.alive() or time.monotonic() > deadline:
            echo.stop()
            raise RuntimeError(f"echo server did not start:\n{echo.log_text()}")
        time.sleep(0.02)
    return echo


def start_kv_server(sidecar: Sidecar, tmp: Path, port: int = KV_PORT) -> Proc:
    """`machnet-kv server` (in-memory store) attached to ``sidecar``, listening on ``port`` once
    this returns."""
    kv = Proc(
        "kv",
        [str(bin_dir() / "machnet-kv"), "server", "--socket", str(sidecar.sock), "--port", str(port)],
        tmp / "kv.log",
    )
    # The server prints "machnet-kv: listening on ..." after it listens.
    deadline = time.monotonic() + 20
    while "listening on" not in kv.log_text():
        if not kv.alive() or time.monotonic() > deadline:
            kv.stop()
            raise RuntimeError(f"kv server did not start:\n{kv.log_text()}")
        time.sleep(0.02)
    return kv


#: Machnet ports of the conformance Raft cluster: raft transport ``base+1..3``, KV front ends
#: ``base+11..13`` (as ``ci/lib/sidecars.sh``'s ``RAFT_BASE_PORT``).
RAFT_BASE_PORT = 30000


class RaftCluster:
    """Three ``raft-node`` processes (``examples/raft``, ids n1..n3) on ``sidecar``, each with a
    KV front end (``--kv-port``): the conformance cases' Raft app. Once constructed all three
    agree on a leader, whose KV port is :attr:`kv_port`."""

    def __init__(self, sidecar: Sidecar, tmp: Path, node_bin: Path, base: int = RAFT_BASE_PORT) -> None:
        ip = sidecar.ip
        peers = ",".join(f"n{i}={ip}:{base + i}" for i in (1, 2, 3))
        self.nodes: List[Proc] = []
        try:
            for i in (1, 2, 3):
                argv = [
                    str(node_bin), "--id", f"n{i}", "--socket", str(sidecar.sock), "--ip", ip,
                    "--port", str(base + i), "--kv-port", str(base + 10 + i),
                    "--peers", peers, "--http", "127.0.0.1:0", "--election-timeout", "2s",
                ]  # fmt: skip
                self.nodes.append(Proc(f"raft-n{i}", argv, tmp / f"raft-n{i}.log"))
            self.kv_port = self._wait_leader([self._http_addr(n) for n in self.nodes])
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _http_addr(node: Proc) -> str:
        """The HTTP address from the node's ``READY <addr> <raft addr>`` line."""
        deadline = time.monotonic() + 20
        while True:
            for line in node.log_text().splitlines():
                if line.startswith("READY "):
                    return line.split()[1]
            if not node.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not start:\n{node.log_text()}")
            time.sleep(0.02)

    def _wait_leader(self, addrs: List[str], timeout: float = 60) -> int:
        """Waits until exactly one node leads and all agree; returns its KV port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                st = [
                    json.load(urllib.request.urlopen(f"http://{a}/status", timeout=2)) for a in addrs
                ]
            except OSError:
                st = []
            leaders = [s for s in st if s["state"] == "Leader"]
            if len(leaders) == 1 and all(s["leader"] == leaders[0]["id"] for s in st):
                return int(leaders[0]["kv_port"])
            time.sleep(0.1)
        logs = "\n".join(n.log_text()[-2000:] for n in self.nodes)
        raise RuntimeError(f"no agreed raft leader after {timeout} s:\n{logs}")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
