#!/usr/bin/env python3
"""Plots ci/bench-throughput.sh's summary: goodput (Gbit/s, log) against message size (log).

  plot_throughput.py SUMMARY_JSON OUT_PNG

Needs matplotlib (the script runs this with its own venv's python). Each point is the median
run of its configuration and is labelled with its window; window-1 configurations (RTT runs)
are drawn as separate unconnected markers.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def size_label(n):
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def main(summary_file, out):
    summary = json.load(open(summary_file))
    meta = summary.get("meta", {})
    configs = summary["configs"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    styles = {"machnet": ("tab:blue", "o", "Machnet (2 sidecars, kernel UDP)"),
              "tcp": ("tab:orange", "s", "kernel TCP (TCP_NODELAY)")}
    sizes = sorted({c["size"] for c in configs})
    for side, (color, marker, label) in styles.items():
        pts = sorted((c["size"], c[side]["gbit_per_sec"], c["window"]) for c in configs
                     if c[side] and c["window"] > 1 and c[side]["gbit_per_sec"] > 0)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker,
                    label=label)
            for x, y, w in pts:
                ax.annotate(f"w{w}", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=color)
        single = [(c["size"], c[side]["gbit_per_sec"]) for c in configs
                  if c[side] and c["window"] == 1 and c[side]["gbit_per_sec"] > 0]
        if single:
            ax.scatter([p[0] for p in single], [p[1] for p in single], color=color,
                       marker=marker, facecolors="none", label=f"{side}, window 1 (RTT)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([size_label(s) for s in sizes])
    ax.set_xlabel("message size")
    ax.set_ylabel("goodput, Gbit/s (payload one way, log)")
    title = "Echo goodput on loopback: Machnet vs kernel TCP"
    if meta.get("commit"):
        title += (f"\ncommit {meta['commit']}, median of {meta.get('repeat')} run(s) of "
                  f"{meta.get('duration')} s")
        if meta.get("tcp_args"):
            title += f", TCP client {meta['tcp_args']}"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    print(f"plot: {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
