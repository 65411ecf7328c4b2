#!/usr/bin/env python3
"""The benchmark figures kept between runs: one definition of every figure id,
its unit, which direction is better and its target, and the logic that turns
per-round samples into out/bench/results.json, merges runs and compares two
result files.

    tools/bench_results.py record RESULTS FIGURES.jsonl [--part NAME ...]
        merges the figures of FIGURES.jsonl (one JSON object a line:
        {"id": ..., "samples": [...], "value": optional}) into RESULTS, with
        this machine, kernel, commit, date and load average; figures of other
        parts already in RESULTS are kept (each figure carries the run it came
        from). tools/bench calls this after every part.
    tools/bench_results.py compare OLD.json [NEW.json]
        per figure in both: old -> new, change in %, better or worse (by the
        figure's direction), and the new figure's target verdict; figures in
        only one file are listed as such. NEW defaults to out/bench/results.json.
    tools/bench_results.py figures
        the table of figure ids.

Writers: flowmeter-bench (tc, ring) appends lines to $BENCH_FIGURES;
tools/bench_e2e.py and tools/bench_series.py call emit(). Pure logic (no I/O)
is in summarize, verdict, merge and compare, unit-tested by
Tests/e2e/test_bench_results.py without root.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SCHEMA = 1


@dataclass(frozen=True)
class Figure:
    unit: str
    better: str            # "higher" or "lower"
    what: str
    target: tuple | None = None   # (">=" or "<=", value), from issue 19 where it sets one


def _f(unit, better, what, target=None):
    return Figure(unit, better, what, target)


# One definition of every figure. Targets are issue 19's (the second
# performance round); a figure without a target is kept for the comparison.
FIGURES: dict[str, Figure] = {
    # tools/bench tc (flowmeter-bench tc): BPF_PROG_TEST_RUN, rounds interleaved with the empty classifier
    "tc.empty_ns": _f("ns", "lower", "empty classifier, per run"),
    "tc.existing_flow_ns": _f("ns", "lower", "tc program, IPv4 packet of an existing flow"),
    "tc.existing_flow_ratio": _f("x", "lower", "existing flow / empty classifier", ("<=", 3.0)),
    "tc.existing_flow_v6_ratio": _f("x", "lower", "IPv6 existing flow / empty classifier"),
    "tc.new_flow_ns": _f("ns", "lower", "tc program, new flow (single runs)"),
    "tc.new_flow_ratio": _f("x", "lower", "new flow / empty classifier (single runs)", ("<=", 5.0)),
    # tools/bench ring (flowmeter-bench ring)
    "ring.count_c_ns": _f("ns/record", "lower", "C ring_buffer__consume, count only"),
    "ring.count_flowmeterd_ns": _f("ns/record", "lower", "flowmeterd RingReader, count only"),
    "ring.count_ratio": _f("x", "higher", "drain, count only: C / flowmeterd time", (">=", 0.9)),
    "ring.aggregate_c_ns": _f("ns/record", "lower", "C drain + open-addressing table"),
    "ring.aggregate_flowmeterd_ns": _f("ns/record", "lower", "flowmeterd FlowsRing + Accounting.count"),
    "ring.aggregate_ratio": _f("x", "higher", "drain with aggregation: C / flowmeterd time", (">=", 0.8)),
    # tools/bench series (tools/bench_series.py)
    "series.rss_before_mib": _f("MiB", "lower", "RSS before the series"),
    "series.rss_10k_mib": _f("MiB", "lower", "RSS with 10,000 live series"),
    "series.bytes_per_pair": _f("bytes", "lower", "RSS per service pair (4 series)"),
    "series.scrape_ms": _f("ms", "lower", "/metrics with 10,000 series, per scrape", ("<=", 10.0)),
    # tools/bench startup|memory|idle (tools/bench_e2e.py)
    "startup.tc_attached_s": _f("s", "lower", "exec to tc attached"),
    "startup.hooks_attached_s": _f("s", "lower", "exec to socket hooks attached"),
    "startup.first_answer_s": _f("s", "lower", "exec to the first /metrics answer", ("<=", 0.25)),
    "memory.idle_rss_mib": _f("MiB", "lower", "idle RSS, default flags (dynamic build)", ("<=", 30.0)),
    "memory.flows_100k_rss_mib": _f("MiB", "lower", "RSS with 100,000 active flows", ("<=", 150.0)),
    "idle.rss_mib": _f("MiB", "lower", "idle RSS of --flowmeterd (tools/bench idle)"),
    # tools/bench drops (tools/bench_drops.sh) and dns (tools/bench_dns.sh): bpf_stats run_time_ns / run_cnt
    "drops.ns_per_drop": _f("ns", "lower", "drop program per dropped packet"),
    "dns.tc_on_off_ratio": _f("x", "lower", "tc ingress program per packet, DNS programs on / off", ("<=", 1.05)),
    "dns.egress_ns_per_packet": _f("ns", "lower", "fm_dns_egress on a non-DNS packet"),
    "dns.ingress_ns_per_packet": _f("ns", "lower", "fm_dns_ingress on a non-DNS packet"),
    "dns.egress_ns_per_query": _f("ns", "lower", "fm_dns_egress per DNS query"),
    "dns.ingress_ns_per_query": _f("ns", "lower", "fm_dns_ingress per DNS answer"),
    # tools/bench iperf: per-round values, configurations interleaved
    "iperf.baseline_gbps": _f("Gbit/s", "higher", "iperf3 without a collector"),
    "iperf.flowmeterd_ratio": _f("x", "higher", "throughput with flowmeterd (drop and DNS hooks on) / baseline",
                                 (">=", 0.98)),
    "iperf.flowmeterd_cost_ratio": _f("x", "higher", "data-path CPU per GB, baseline / flowmeterd", (">=", 0.95)),
    "iperf.flowmeterd_nodns_ratio": _f("x", "higher", "throughput with flowmeterd --dns-ports off / baseline"),
    "iperf.flowmeterd_nodns_cost_ratio": _f("x", "higher", "data-path CPU per GB, baseline / flowmeterd --dns-ports off"),
    "iperf.softflowd_ratio": _f("x", "higher", "throughput with softflowd / baseline"),
    "iperf.pmacctd_ratio": _f("x", "higher", "throughput with pmacctd / baseline"),
    "iperf.flowmeterd_cpu_s_per_gb": _f("s/GB", "lower", "flowmeterd's own CPU per GB (both ends, BPF not included)"),
    "iperf.flowmeterd_nodns_cpu_s_per_gb": _f("s/GB", "lower", "flowmeterd --dns-ports off, own CPU per GB"),
    "iperf.softflowd_cpu_s_per_gb": _f("s/GB", "lower", "softflowd's own CPU per GB (both ends)"),
    "iperf.pmacctd_cpu_s_per_gb": _f("s/GB", "lower", "pmacctd's own CPU per GB (both ends, core and plugin)"),
    "iperf.bpf_cpu_s_per_gb": _f("s/GB", "lower", "flowmeterd's BPF programs per GB (bpf_stats run)"),
    # tools/bench churn: per-round values, configurations interleaved
    "churn.baseline_rate": _f("conn/s", "higher", "connections/s without a collector"),
    "churn.flowmeterd_ratio": _f("x", "higher", "connection rate with flowmeterd (drop and DNS hooks on) / baseline",
                                 (">=", 0.95)),
    "churn.flowmeterd_nodns_ratio": _f("x", "higher", "connection rate with flowmeterd --dns-ports off / baseline"),
    "churn.softflowd_ratio": _f("x", "higher", "connection rate with softflowd / baseline"),
    "churn.pmacctd_ratio": _f("x", "higher", "connection rate with pmacctd / baseline"),
    "churn.flowmeterd_cpu_s_per_10k": _f("s", "lower", "flowmeterd's own CPU per 10,000 connections"),
    "churn.flowmeterd_nodns_cpu_s_per_10k": _f("s", "lower", "flowmeterd --dns-ports off, own CPU per 10,000 connections"),
    "churn.softflowd_cpu_s_per_10k": _f("s", "lower", "softflowd's own CPU per 10,000 connections"),
    "churn.pmacctd_cpu_s_per_10k": _f("s", "lower", "pmacctd's own CPU per 10,000 connections"),
    "churn.lost_records": _f("records", "lower", "ring records lost over all flowmeterd phases", ("<=", 0)),
    "churn.bpf_ns_per_connection": _f("ns", "lower", "all BPF per TCP connection (bpf_stats phase)", ("<=", 4000)),
    "churn.state_change_ns_per_run": _f("ns", "lower", "state-change program per run (bpf_stats phase)", ("<=", 150)),
    "churn.rss_end_mib": _f("MiB", "lower", "RSS of daemon A at the end of its last phase"),
}


# ---------------------------------------------------------------------------
# pure logic


def _quantile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (as statistics.quantiles' 'inclusive')."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _num(x: float) -> str:
    """4 significant digits, without an exponent for large numbers."""
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:,.0f}"


def verdict(fig: Figure, value: float | None) -> str | None:
    """'met', 'not met by X unit', or None without a target or a value."""
    if fig.target is None or value is None:
        return None
    op, limit = fig.target
    ok = value >= limit if op == ">=" else value <= limit
    if ok:
        return "met"
    return f"not met by {_num(abs(value - limit))}" + (fig.unit if fig.unit == "x" else f" {fig.unit}")


def summarize(fid: str, samples: list[float] | None = None, value: float | None = None,
              note: str | None = None) -> dict:
    """One figure's entry: the figure (value, else the samples' median) with
    its spread over the rounds, unit, direction and target verdict. Raises
    KeyError for an id not in FIGURES, ValueError for no number at all."""
    if fid not in FIGURES:
        raise KeyError(f"unknown figure id {fid!r} (define it in tools/bench_results.py FIGURES)")
    fig = FIGURES[fid]
    xs = [float(x) for x in (samples or []) if x is not None and not math.isnan(float(x))]
    if value is None:
        if not xs:
            raise ValueError(f"figure {fid}: neither samples nor a value")
        value = statistics.median(xs)
    spread = None
    if xs:
        spread = {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
                  "q1": _quantile(xs, 0.25), "q3": _quantile(xs, 0.75), "rounds": len(xs)}
    entry = {"value": float(value), "unit": fig.unit, "better": fig.better, "what": fig.what,
             "spread": spread,
             "target": None if fig.target is None else f"{fig.target[0]} {fig.target[1]:g}",
             "verdict": verdict(fig, float(value))}
    if note:
        entry["note"] = note
    return entry


def collect(lines: list[dict]) -> dict[str, dict]:
    """Figure entries from emitted lines; a later line of the same id wins."""
    out = {}
    for d in lines:
        out[d["id"]] = summarize(d["id"], d.get("samples"), d.get("value"), d.get("note"))
    return out


def merge(old: dict | None, figures: dict[str, dict], run: dict) -> dict:
    """The results document with `figures` (from one run described by `run`)
    merged into `old`: figures of the same id are replaced, all others kept.
    Every figure carries its run's description, so a file merged from parts
    run at different times says where each number came from; the top level
    describes the latest run."""
    doc = {"schema": SCHEMA, "figures": {}}
    if old:
        if old.get("schema", SCHEMA) != SCHEMA:
            raise ValueError(f"results schema {old.get('schema')} is not {SCHEMA}")
        doc["figures"] = dict(old.get("figures", {}))
        if "runs" in old:
            doc["runs"] = list(old["runs"])
    doc.setdefault("runs", [])
    doc["runs"].append(run)
    for fid, entry in figures.items():
        doc["figures"][fid] = {**entry, "run": len(doc["runs"]) - 1}
    for key in ("machine", "kernel", "commit", "date", "loadavg"):
        if key in run:
            doc[key] = run[key]
    return doc


def compare(old: dict, new: dict) -> dict:
    """Rows for every figure in both documents, plus the ids in only one."""
    of, nf = old.get("figures", {}), new.get("figures", {})
    rows = []
    for fid in sorted(set(of) & set(nf)):
        o, n = of[fid]["value"], nf[fid]["value"]
        better = (FIGURES[fid].better if fid in FIGURES else nf[fid].get("better")) or "higher"
        change = None if o == 0 else (n - o) / abs(o) * 100
        if n == o:
            how = "same"
        elif (n > o) == (better == "higher"):
            how = "better"
        else:
            how = "worse"
        sp = of[fid].get("spread")
        within = sp is not None and sp["min"] <= n <= sp["max"]
        fig = FIGURES.get(fid)
        rows.append({"id": fid, "old": o, "new": n, "unit": nf[fid].get("unit", ""), "change_pct": change,
                     "direction": how, "within_old_spread": within,
                     "verdict": verdict(fig, n) if fig else nf[fid].get("verdict"),
                     "target": nf[fid].get("target")})
    return {"rows": rows, "only_old": sorted(set(of) - set(nf)), "only_new": sorted(set(nf) - set(of))}




def format_compare(c: dict, old_name: str = "old", new_name: str = "new") -> str:
    lines = [f"old: {old_name}", f"new: {new_name}",
             f"{'figure':<36}{'old':>14} -> {'new':<14}{'change':>9}  {'':<7} target"]
    for r in c["rows"]:
        ch = "n/a" if r["change_pct"] is None else f"{r['change_pct']:+.1f}%"
        how = r["direction"] + (" (in old spread)" if r["within_old_spread"] and r["direction"] != "same" else "")
        tgt = "" if not r["target"] else f"{r['target']}: {r['verdict']}"
        lines.append(f"{r['id']:<36}{_num(r['old']):>14} -> {_num(r['new']) + ' ' + r['unit']:<14}{ch:>9}  "
                     f"{how:<7} {tgt}".rstrip())
    if c["only_old"]:
        lines.append(f"only in {old_name}: " + ", ".join(c["only_old"]))
    if c["only_new"]:
        lines.append(f"only in {new_name}: " + ", ".join(c["only_new"]))
    better = sum(r["direction"] == "better" for r in c["rows"])
    worse = sum(r["direction"] == "worse" for r in c["rows"])
    lines.append(f"{len(c['rows'])} figures in both: {better} better, {worse} worse")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# I/O


def emit(path: str | os.PathLike | None, fid: str, samples=None, value=None, note=None) -> None:
    """Appends one figure line (checked against FIGURES now, not at record time)."""
    if not path:
        return
    summarize(fid, samples, value)  # fail early on an unknown id or no number
    d = {"id": fid, "samples": list(samples or [])}
    if value is not None:
        d["value"] = value
    if note:
        d["note"] = note
    with open(path, "a") as f:
        f.write(json.dumps(d) + "\n")


def machine() -> dict:
    model = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {"cpu_model": model or platform.processor() or "unknown", "nproc": os.cpu_count(),
            "memory_bytes": mem}


def run_info(parts: list[str], repo: Path) -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        if subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--", "Sources", "bpf", "bench"],
                          capture_output=True).returncode != 0:
            commit += "+dirty"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "kernel": os.uname().release, "machine": machine(), "commit": commit,
            "loadavg": list(os.getloadavg()), "parts": parts}


def read_lines(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="merge emitted figure lines into a results file")
    r.add_argument("results")
    r.add_argument("figures")
    r.add_argument("--part", action="append", default=[])
    c = sub.add_parser("compare", help="compare two results files")
    c.add_argument("old")
    c.add_argument("new", nargs="?", default="out/bench/results.json")
    sub.add_parser("figures", help="list the figure ids")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "record":
            res = Path(a.results)
            old = json.loads(res.read_text()) if res.exists() else None
            figs = collect(read_lines(Path(a.figures)))
            if not figs:
                print(f"bench_results: no figures in {a.figures}; {res} unchanged", file=sys.stderr)
                return 1
            doc = merge(old, figs, run_info(a.part, Path(__file__).resolve().parents[1]))
            tmp = res.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
            tmp.replace(res)
            for fid, e in figs.items():
                if e["target"]:
                    print(f"target {fid} {e['target']}: {_num(e['value'])}{'' if e['unit'] == 'x' else ' ' + e['unit']}, "
                          f"{e['verdict']}")
            print(f"{res}: {len(figs)} figures recorded"
                  + (f", {len(doc['figures']) - len(figs)} kept from earlier runs" if old else ""))
        elif a.cmd == "compare":
            docs = []
            for p in (a.old, a.new):
                try:
                    docs.append(json.loads(Path(p).read_text()))
                except FileNotFoundError:
                    print(f"bench_results: no file {p}", file=sys.stderr)
                    return 2
                except json.JSONDecodeError as e:
                    print(f"bench_results: {p} is not JSON: {e}", file=sys.stderr)
                    return 2
            print(format_compare(compare(*docs), a.old, a.new))
        else:
            for fid, f in FIGURES.items():
                t = "" if f.target is None else f"  target {f.target[0]} {f.target[1]:g}"
                print(f"{fid:<36}{f.unit:<10}{f.better:<7}{f.what}{t}")
    except (KeyError, ValueError) as e:
        print(f"bench_results: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
