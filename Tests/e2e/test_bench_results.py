"""The pure logic behind tools/bench's kept figures (tools/bench_results.py):
spreads from per-round samples, target verdicts, merging a part's figures into
results.json, comparing two result files, and the committed baseline. No root,
no kernel: these run wherever pytest runs (CI runs them with the e2e suite).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from unprivileged import _privileged, _remove_stale_namespaces  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import bench_results as br  # noqa: E402
import bench_e2e as be  # noqa: E402

TOOL = str(REPO / "tools" / "bench_results.py")


def doc(**values):
    """A results document with figures of the given values (no spread)."""
    return br.merge(None, {k.replace("__", "."): br.summarize(k.replace("__", "."), value=v) for k, v in values.items()},
                    {"date": "2026-12-06T00:00:00Z", "commit": "abc"})


def test_summarize_spread_of_samples():
    e = br.summarize("tc.existing_flow_ns", [30, 10, 20, 50, 40])
    assert e["value"] == 30
    assert e["spread"] == {"median": 30, "min": 10, "max": 50, "q1": 20, "q3": 40, "rounds": 5}
    assert (e["unit"], e["better"], e["target"], e["verdict"]) == ("ns", "lower", None, None)


def test_summarize_value_beats_median_and_interpolates_quartiles():
    # A ratio of medians is not the median of per-round ratios: the printed value wins.
    e = br.summarize("tc.existing_flow_ratio", [2.0, 4.0, 3.0, 5.0], value=3.2)
    assert e["value"] == 3.2
    assert e["spread"]["median"] == 3.5
    assert e["spread"]["q1"] == pytest.approx(2.75) and e["spread"]["q3"] == pytest.approx(4.25)
    assert e["target"] == "<= 3" and e["verdict"] == "not met by 0.2x"


def test_summarize_rejects_unknown_ids_and_missing_numbers():
    with pytest.raises(KeyError, match="unknown figure id"):
        br.summarize("tc.no_such_figure", [1.0])
    with pytest.raises(ValueError, match="neither samples nor a value"):
        br.summarize("tc.empty_ns", [])
    # NaN samples (a median of nothing) do not count as rounds.
    assert br.summarize("tc.empty_ns", [float("nan"), 4.0])["spread"]["rounds"] == 1


@pytest.mark.parametrize("fid,value,want", [
    ("ring.aggregate_ratio", 0.8, "met"),
    ("ring.aggregate_ratio", 0.5, "not met by 0.3x"),
    ("series.scrape_ms", 9.9, "met"),
    ("series.scrape_ms", 27.1, "not met by 17.1 ms"),
    ("churn.lost_records", 0, "met"),
    ("churn.lost_records", 3, "not met by 3 records"),
    ("tc.empty_ns", 11, None),
])
def test_verdict_takes_the_direction_of_the_target(fid, value, want):
    assert br.verdict(br.FIGURES[fid], value) == want


def test_merge_keeps_other_parts_and_replaces_the_same_id():
    first = br.merge(None, {"tc.empty_ns": br.summarize("tc.empty_ns", [11, 12]),
                            "tc.existing_flow_ns": br.summarize("tc.existing_flow_ns", [100])},
                     {"date": "d1", "commit": "c1", "parts": ["tc"]})
    second = br.merge(first, {"tc.empty_ns": br.summarize("tc.empty_ns", [20]),
                              "series.scrape_ms": br.summarize("series.scrape_ms", [9])},
                      {"date": "d2", "commit": "c2", "parts": ["series"]})
    f = second["figures"]
    assert set(f) == {"tc.empty_ns", "tc.existing_flow_ns", "series.scrape_ms"}
    assert f["tc.empty_ns"]["value"] == 20 and f["tc.empty_ns"]["run"] == 1
    assert f["tc.existing_flow_ns"]["value"] == 100 and f["tc.existing_flow_ns"]["run"] == 0
    assert [r["date"] for r in second["runs"]] == ["d1", "d2"]
    assert second["commit"] == "c2"
    # The first document is not changed by merging into it.
    assert first["figures"]["tc.empty_ns"]["value"] == 11.5 and len(first["runs"]) == 1
    with pytest.raises(ValueError, match="schema"):
        br.merge({"schema": 99, "figures": {}}, {}, {})


def test_compare_direction_change_and_one_sided_figures():
    old = doc(tc__existing_flow_ns=100, ring__aggregate_ratio=0.5, churn__lost_records=0, tc__empty_ns=10)
    old["figures"]["tc.existing_flow_ns"]["spread"] = {"median": 100, "min": 90, "max": 120, "q1": 95, "q3": 110,
                                                       "rounds": 5}
    new = doc(tc__existing_flow_ns=110, ring__aggregate_ratio=0.6, churn__lost_records=0, series__scrape_ms=8)
    c = br.compare(old, new)
    rows = {r["id"]: r for r in c["rows"]}
    assert set(rows) == {"tc.existing_flow_ns", "ring.aggregate_ratio", "churn.lost_records"}
    # Lower is better: up 10% is worse, though within the old rounds' spread.
    assert rows["tc.existing_flow_ns"]["direction"] == "worse"
    assert rows["tc.existing_flow_ns"]["change_pct"] == pytest.approx(10.0)
    assert rows["tc.existing_flow_ns"]["within_old_spread"] is True
    # Higher is better: up 20% is better, and the new value's verdict is given.
    assert rows["ring.aggregate_ratio"]["direction"] == "better"
    assert rows["ring.aggregate_ratio"]["change_pct"] == pytest.approx(20.0)
    assert rows["ring.aggregate_ratio"]["verdict"] == "not met by 0.2x"
    assert rows["ring.aggregate_ratio"]["within_old_spread"] is False
    # 0 -> 0: no percentage, same.
    assert rows["churn.lost_records"]["change_pct"] is None and rows["churn.lost_records"]["direction"] == "same"
    assert c["only_old"] == ["tc.empty_ns"] and c["only_new"] == ["series.scrape_ms"]
    text = br.format_compare(c, "old.json", "new.json")
    assert "only in old.json: tc.empty_ns" in text and "only in new.json: series.scrape_ms" in text
    assert "+20.0%" in text and "3 figures in both: 1 better, 1 worse" in text


def test_emit_checks_the_id_and_appends_lines(tmp_path):
    out = tmp_path / "figures.jsonl"
    br.emit(out, "iperf.pmacctd_ratio", [0.5, 0.6])
    br.emit(out, "churn.lost_records", [0, 0], 0)
    br.emit(None, "iperf.pmacctd_ratio", [0.5])  # no file: nothing to do
    with pytest.raises(KeyError):
        br.emit(out, "iperf.nobody_ratio", [1])
    lines = br.read_lines(out)
    assert [d["id"] for d in lines] == ["iperf.pmacctd_ratio", "churn.lost_records"]
    assert br.collect(lines)["iperf.pmacctd_ratio"]["spread"]["rounds"] == 2


def test_every_figure_bench_e2e_emits_is_defined():
    """bench_e2e builds ids from its configuration names: each must exist."""
    for config in be.CONFIGS[1:]:
        key = be.config_key(config)
        for fid in (f"iperf.{key}_ratio", f"iperf.{key}_cpu_s_per_gb", f"churn.{key}_ratio",
                    f"churn.{key}_cpu_s_per_10k"):
            assert fid in br.FIGURES, fid
        if config in be.FLOWMETERD_CONFIGS:
            assert f"iperf.{key}_cost_ratio" in br.FIGURES


def test_parse_configs():
    assert be.parse_configs("pmacctd, baseline,flowmeterd") == ["baseline", "flowmeterd", "pmacctd"]
    with pytest.raises(be.BenchError, match="unknown nfdump"):
        be.parse_configs("baseline,flowmeterd,nfdump")
    with pytest.raises(be.BenchError, match="must include baseline"):
        be.parse_configs("flowmeterd,softflowd")


def test_rotated_runs_each_config_once_per_round_starting_further_along():
    got = list(be.rotated(["a", "b", "c"], 4))
    assert got == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"),
                   (2, "c"), (2, "a"), (2, "b"), (3, "a"), (3, "b"), (3, "c")]


def test_pmacctd_counted_sums_every_refresh(tmp_path):
    out = tmp_path / "pm.csv"
    assert be.pmacctd_counted(out) == {"packets": 0, "bytes": 0, "rows": 0}
    out.write_text("SRC_IP,DST_IP,SRC_PORT,DST_PORT,PROTOCOL,PACKETS,BYTES\n"
                   "10.211.0.1,10.211.0.2,40000,5201,tcp,10,15000\n"
                   "SRC_IP,DST_IP,SRC_PORT,DST_PORT,PROTOCOL,PACKETS,BYTES\n"
                   "10.211.0.1,10.211.0.2,40000,5201,tcp,5,7000\n"
                   "10.211.0.2,10.211.0.1,5201,40000,tcp,3,156\n"
                   "10.211.0.2,10.211.0\n")  # a line cut mid-write is not counted
    assert be.pmacctd_counted(out) == {"packets": 18, "bytes": 22156, "rows": 3}


def test_tree_cpu_counts_a_child():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass\ntime.sleep(30)"])
    try:
        import os
        import time
        deadline = time.monotonic() + 10
        while be.tree_cpu_seconds(child.pid) < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in be.tree_pids(os.getpid())
        assert be.tree_cpu_seconds(os.getpid()) >= be.tree_cpu_seconds(child.pid) >= 0.2
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("name", ["baseline.json", "previous-round.json"])
def test_baselines_are_valid_and_say_where_each_figure_came_from(name):
    """bench/baseline.json: tools/bench on main's code with spreads;
    bench/previous-round.json: the earlier round's single figures."""
    base = json.loads((REPO / "bench" / name).read_text())
    assert base["schema"] == br.SCHEMA
    assert len(base["figures"]) >= 20
    for fid, e in base["figures"].items():
        assert fid in br.FIGURES, fid
        assert e["unit"] == br.FIGURES[fid].unit and e["better"] == br.FIGURES[fid].better, fid
        assert isinstance(e["value"], (int, float)), fid
        assert 0 <= e["run"] < len(base["runs"]), fid
        if e["spread"] is None:
            assert e.get("note"), f"{fid}: a figure without a spread says where it came from"
        else:
            assert e["spread"]["min"] <= e["spread"]["median"] <= e["spread"]["max"], fid
    for r in base["runs"]:
        assert r.get("date") and r.get("commit") and r.get("kernel") and "loadavg" in r
    c = br.compare(base, base)
    assert c["rows"] and all(r["direction"] == "same" for r in c["rows"])


def test_cli_record_merges_and_compare_reports(tmp_path):
    res, figs = tmp_path / "results.json", tmp_path / "figures.jsonl"
    figs.write_text(json.dumps({"id": "tc.empty_ns", "samples": [10, 12, 11]}) + "\n")
    r = subprocess.run([sys.executable, TOOL, "record", str(res), str(figs), "--part", "tc"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    figs.write_text(json.dumps({"id": "series.scrape_ms", "samples": [8, 9]}) + "\n")
    r = subprocess.run([sys.executable, TOOL, "record", str(res), str(figs), "--part", "series"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "1 kept from earlier runs" in r.stdout, r.stdout + r.stderr
    d = json.loads(res.read_text())
    assert set(d["figures"]) == {"tc.empty_ns", "series.scrape_ms"}
    assert d["machine"]["nproc"] >= 1 and d["kernel"] and d["runs"][1]["parts"] == ["series"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc(tc__empty_ns=22)))
    r = subprocess.run([sys.executable, TOOL, "compare", str(old), str(res)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "tc.empty_ns" in r.stdout and "-50.0%" in r.stdout and "better" in r.stdout
    assert "only in" in r.stdout and "series.scrape_ms" in r.stdout
    r = subprocess.run([sys.executable, TOOL, "compare", str(tmp_path / "missing.json"), str(res)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no file" in r.stderr
    figs.write_text(json.dumps({"id": "tc.bogus", "samples": [1]}) + "\n")
    r = subprocess.run([sys.executable, TOOL, "record", str(res), str(figs)], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown figure id 'tc.bogus'" in r.stderr


def test_symbol_component_names_the_library_or_swift_module():
    assert be.symbol_component("$s10Foundation4DataV5countSivg") == "Swift module Foundation"
    assert be.symbol_component("$s7NIOCore10ByteBufferV") == "Swift module NIOCore"
    assert be.symbol_component("$sSS5countSivg") == "Swift runtime and standard library"
    assert be.symbol_component("swift_retain") == "Swift runtime and standard library"
    assert be.symbol_component("icudt76_dat") == "ICU data (icudt*_dat)"
    assert be.symbol_component("_ZN6icu_767UnicodeSetC2Ev") == "ICU"
    assert be.symbol_component("bpf_object__load") == "libbpf"
    assert be.symbol_component("_dispatch_worker_thread") == "libdispatch"
    assert be.symbol_component("memcpy_fast") == "other C/C++ (C)"


def test_smaps_breakdown_of_this_process():
    """The classification on a live process (our own: no root): the
    interpreter's text is the binary's, and a started thread's stack is told
    apart from other anonymous memory by its guard page."""
    import threading
    import os
    import sys
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        parts = be.smaps_breakdown(os.getpid(), sys.executable)
    finally:
        stop.set()
        t.join()
    kinds = parts["kinds"]
    assert kinds["the binary: text"]["rss_kib"] > 0
    assert kinds["anon: thread stacks"]["mappings"] >= 1
    assert len(parts["threads"]) >= 2
    assert parts["rollup_kib"] == sum(k["rss_kib"] for k in kinds.values())
