"""Starting real sidecars and the Rust echo server (used by the tests and by bench/compare.py).

Binaries come from ``$MACHNET_BIN_DIR`` (default: ``$CARGO_TARGET_DIR/release`` or the
repository's ``target/release``); build them with
``cargo build --release -p machnet-sidecar -p machnet-echo -p machnet-kv``.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
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
