#!/usr/bin/env python3
"""Helpers of ci/bench-throughput.sh (standard library only).

  bench_throughput.py record RESULTS SIDE REPEAT SIZE WINDOW RC CLK_TCK TICKS_BEFORE TICKS_AFTER \
      SIDECAR_TICKS_BEFORE SIDECAR_TICKS_AFTER CLIENT_JSON_FILE
      appends one JSON line for a client run to RESULTS: the client's report plus the CPU
      seconds of every process on that side (TICKS_* are utime+stime clock ticks summed over
      the side's long-lived processes: both sidecars and the echo server for Machnet, the echo
      server for TCP; SIDECAR_TICKS_* the sidecars' share, 0 for TCP)
  bench_throughput.py summary RESULTS SUMMARY_JSON META_JSON
      picks each (side, size, window)'s median run (by msgs/s), writes SUMMARY_JSON and prints
      the table

Definitions (also in the script's header):
  bytes moved       = total_messages x size x 2 (each message crosses both ways)
  cpu_s             = side processes' CPU over the client run + the client's own cpu_s
  cpu_s_per_gb      = cpu_s / (bytes moved / 1e9)
  cpu_s_per_mmsg    = cpu_s / (total_messages / 1e6)
  gbit_per_sec      = machnet-echo's figure: measured msgs/s x size x 8 / 1e9 (payload one way)
"""

import json
import statistics
import sys


def record(argv):
    (results, side, repeat, size, window, rc, clk_tck, before, after, sc_before, sc_after,
     client_file) = argv
    clk = float(clk_tck)
    row = {"side": side, "repeat": int(repeat), "size": int(size), "window": int(window),
           "rc": int(rc)}
    text = open(client_file).read().strip()
    try:
        report = json.loads(text.splitlines()[-1]) if text else None
    except json.JSONDecodeError:
        report = None
    if report is None or int(rc) != 0:
        row["error"] = f"client exit {rc}: {text[-300:]}"
    if report is not None:
        row.update({k: v for k, v in report.items() if k not in ("size", "window")})
        server_cpu = (int(after) - int(before)) / clk
        sidecars_cpu = (int(sc_after) - int(sc_before)) / clk
        client_cpu = float(report.get("cpu_s", 0.0))
        total = server_cpu + client_cpu
        msgs = int(report.get("total_messages", 0))
        moved = msgs * int(size) * 2
        row.update({
            "side_cpu_s": server_cpu,  # sidecars + echo server (Machnet); echo server (TCP)
            "sidecars_cpu_s": sidecars_cpu,
            "client_cpu_s": client_cpu,
            "cpu_s": total,
            "bytes_moved": moved,
            "cpu_s_per_gb": total / (moved / 1e9) if moved else None,
            "cpu_s_per_mmsg": total / (msgs / 1e6) if msgs else None,
        })
        if report.get("mismatches", 0):
            row["error"] = f"{report['mismatches']} mismatched echoes"
    with open(results, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    print(json.dumps(row, sort_keys=True)[:400], file=sys.stderr)


def median_run(runs):
    """The run whose msgs/s is the median (lower middle for an even count)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return None
    ok.sort(key=lambda r: r["msgs_per_sec"])
    return ok[(len(ok) - 1) // 2]


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def human_size(n):
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def summary(argv):
    results, out, meta_file = argv
    rows = [json.loads(line) for line in open(results) if line.strip()]
    meta = json.load(open(meta_file))
    configs = []
    for r in rows:
        key = (r["size"], r["window"])
        if key not in configs:
            configs.append(key)
    entries = []
    failed = 0
    for size, window in configs:
        e = {"size": size, "window": window}
        for side in ("machnet", "tcp"):
            runs = [r for r in rows if r["side"] == side and r["size"] == size
                    and r["window"] == window]
            failed += sum(1 for r in runs if "error" in r)
            m = median_run(runs)
            e[side] = None if m is None else {
                "runs": len(runs),
                "ok_runs": sum(1 for r in runs if "error" not in r),
                "msgs_per_sec": m["msgs_per_sec"],
                "msgs_per_sec_all": [r.get("msgs_per_sec") for r in runs],
                "gbit_per_sec": m["gbit_per_sec"],
                "rtt_p50_us": m["rtt_us"]["p50"],
                "rtt_p99_us": m["rtt_us"]["p99"],
                "total_messages": m["total_messages"],
                "cpu_s": m["cpu_s"],
                "side_cpu_s": m["side_cpu_s"],
                "client_cpu_s": m["client_cpu_s"],
                "cpu_s_per_gb": m["cpu_s_per_gb"],
                "cpu_s_per_mmsg": m["cpu_s_per_mmsg"],
            }
        mc, tc = e["machnet"], e["tcp"]
        e["msgs_ratio"] = mc["msgs_per_sec"] / tc["msgs_per_sec"] if mc and tc else None
        e["cpu_per_gb_ratio"] = (mc["cpu_s_per_gb"] / tc["cpu_s_per_gb"]
                                 if mc and tc and tc["cpu_s_per_gb"] else None)
        entries.append(e)
    json.dump({"meta": meta, "configs": entries, "failed_runs": failed}, open(out, "w"),
              indent=1)

    def g(e, side, key):
        return e[side][key] if e[side] else None

    head = ("| size | window | Machnet msgs/s | TCP msgs/s | ratio | Machnet Gbit/s | TCP Gbit/s "
            "| Machnet RTT p50 / p99 µs | TCP RTT p50 / p99 µs | Machnet CPU s/GB | TCP CPU s/GB "
            "| Machnet CPU s/M msgs | TCP CPU s/M msgs | CPU ratio |")
    print(head)
    print("|" + "---|" * 14)
    for e in entries:
        rtt = {s: (f"{fmt(g(e, s, 'rtt_p50_us'), ',.1f')} / {fmt(g(e, s, 'rtt_p99_us'), ',.1f')}")
               for s in ("machnet", "tcp")}
        print(f"| {human_size(e['size'])} | {e['window']} "
              f"| {fmt(g(e, 'machnet', 'msgs_per_sec'), ',.0f')} "
              f"| {fmt(g(e, 'tcp', 'msgs_per_sec'), ',.0f')} "
              f"| {fmt(e['msgs_ratio'], '.2f')}× "
              f"| {fmt(g(e, 'machnet', 'gbit_per_sec'), '.3f')} "
              f"| {fmt(g(e, 'tcp', 'gbit_per_sec'), '.3f')} "
              f"| {rtt['machnet']} | {rtt['tcp']} "
              f"| {fmt(g(e, 'machnet', 'cpu_s_per_gb'), '.2f')} "
              f"| {fmt(g(e, 'tcp', 'cpu_s_per_gb'), '.2f')} "
              f"| {fmt(g(e, 'machnet', 'cpu_s_per_mmsg'), '.2f')} "
              f"| {fmt(g(e, 'tcp', 'cpu_s_per_mmsg'), '.2f')} "
              f"| {fmt(e['cpu_per_gb_ratio'], '.2f')}× |")
    if failed:
        print(f"{failed} run(s) failed: see {results} (\"error\")")
    return 1 if failed else 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "record":
        record(args)
    elif cmd == "summary":
        sys.exit(summary(args))
    else:
        sys.exit(f"unknown command {cmd}")
