"""Every ccadgpu subcommand end to end on tiny sizes: exit codes, JSON schema, a real PNG."""
import json
import os

import pytest

import ccadgpu
from ccadgpu.cli import main

ROW_KEYS = {"workload", "policy", "profile", "size", "page_size", "seed", "repeat", "verified",
            "wall_s", "modeled_s", "throughput_gbps", "touched_bytes", "migrated_bytes",
            "migrated_bytes_by_direction", "migrated_bytes_by_cause", "migration_gbps_modeled",
            "migration_gbps_wall", "remote_fraction", "thrashing_pages", "epoch_p50_s",
            "epoch_p99_s", "device_peak_pages", "epochs", "notifications"}


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend" in out and "gh200" in out and "access_counter" in out


def test_demo(capsys):
    assert main(["demo", "--size", "3MiB", "--iters", "6"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out and "device reset" in out


def test_bench_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = main(["bench", "--workload", "stream_reuse,pingpong", "--policy",
               "static,access_counter,oracle", "--profile", "h100-pcie", "--size", "1MiB",
               "--json", str(js), "--plot", str(png)])
    assert rc == 0
    doc = json.loads(js.read_text())
    assert doc["schema"] == "ccadgpu-bench/1" and len(doc["rows"]) == 6
    for row in doc["rows"]:
        assert ROW_KEYS <= set(row) and row["verified"]
    oracle = [r for r in doc["rows"] if r["policy"] == "oracle"]
    assert all("lower_bound_s" in r for r in oracle)
    head = png.read_bytes()[:8]
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 5000


def test_bench_is_deterministic_in_modeled_time(tmp_path):
    outs = []
    for i in range(2):
        js = tmp_path / f"{i}.json"
        assert main(["bench", "--workload", "random_gather", "--policy", "access_counter",
                     "--profile", "gh200", "--size", "1MiB", "--seed", "3",
                     "--json", str(js)]) == 0
        outs.append(json.loads(js.read_text())["rows"][0])
    for k in ("modeled_s", "migrated_bytes", "remote_fraction", "epoch_p99_s"):
        assert outs[0][k] == outs[1][k]


def test_bench_tunables_reach_the_space_and_compare(tmp_path, capsys):
    # pingpong on h100-pcie under first_touch: the device first touches the shared pages and
    # the CPU updates them there; coherent, it writes them remotely over BAR1 (slow),
    # migrate_on_cpu_fault brings them home first
    import subprocess
    import sys
    js = {}
    for mode in ("coherent", "migrate_on_cpu_fault"):
        js[mode] = tmp_path / f"{mode}.json"
        assert main(["bench", "--workload", "pingpong", "--policy", "static,first_touch",
                     "--profile", "h100-pcie", "--size", "1MiB", "--tunable",
                     f"cpu_access={mode}", "--json", str(js[mode])]) == 0
    rows = {m: {r["policy"]: r for r in json.loads(f.read_text())["rows"]} for m, f in js.items()}
    assert rows["coherent"]["static"]["modeled_s"] == \
        rows["migrate_on_cpu_fault"]["static"]["modeled_s"]
    ft = [rows[m]["first_touch"] for m in js]
    assert ft[0]["migrated_bytes"] < ft[1]["migrated_bytes"]
    assert ft[0]["modeled_s"] > 10 * ft[1]["modeled_s"]
    tool = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_table.py")
    out = subprocess.run([sys.executable, tool, str(js["coherent"]), "--against",
                          str(js["migrate_on_cpu_fault"])], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "2 rows in both: 1 equal (0.1%)" in out.stdout and "verified: yes" in out.stdout
    # nothing in common is a failed comparison, not a pass
    assert main(["bench", "--workload", "hot_cold", "--policy", "static", "--profile",
                 "gh200", "--size", "1MiB", "--json", str(tmp_path / "other.json")]) == 0
    out = subprocess.run([sys.executable, tool, str(js["coherent"]), "--against",
                          str(tmp_path / "other.json")], capture_output=True, text=True)
    assert out.returncode == 1 and "0 rows in both" in out.stdout and "only in A (2)" in out.stdout


def test_the_oracle_records_every_epoch_whatever_the_tunables():
    from ccadgpu.bench import run_workload
    want = run_workload("krylov", "oracle", "h100-pcie", "1MiB").row
    for t in ({"trace": False}, {"trace_max_epochs": 2}):
        got = run_workload("krylov", "oracle", "h100-pcie", "1MiB", tunables=t).row
        assert got["modeled_s"] == want["modeled_s"]
        assert got["lower_bound_s"] == want["lower_bound_s"] > 0


def test_trace_record_and_replay(tmp_path, capsys):
    f = tmp_path / "t.npz"
    assert main(["trace", "record", "--workload", "krylov", "--size", "1MiB",
                 "-o", str(f)]) == 0
    js = tmp_path / "r.json"
    assert main(["trace", "replay", str(f), "--policy", "static,on_demand,oracle",
                 "--profile", "h100-pcie", "--json", str(js)]) == 0
    rows = json.loads(js.read_text())["rows"]
    assert [r["policy"] for r in rows] == ["static", "on_demand", "oracle"]
    assert rows[2]["modeled_s"] <= min(r["modeled_s"] for r in rows) * (1 + 1e-9)
    # --tunable: the replays run under it (here the CPU faults device pages home)
    js2 = tmp_path / "r2.json"
    assert main(["trace", "replay", str(f), "--policy", "first_touch", "--profile", "h100-pcie",
                 "--tunable", "cpu_access=migrate_on_cpu_fault", "--json", str(js2)]) == 0
    assert "cpu_access=migrate_on_cpu_fault" in capsys.readouterr().out
    r2 = json.loads(js2.read_text())["rows"][0]
    tr = ccadgpu.Trace.load(f)
    want = ccadgpu.replay(tr, "first_touch", profile="h100-pcie",
                          tunables={"cpu_access": "migrate_on_cpu_fault"})
    assert r2["modeled_s"] == want["modeled_s"] != \
        ccadgpu.replay(tr, "first_touch", profile="h100-pcie")["modeled_s"]
    assert main(["trace", "replay", str(f), "--tunable", "nope=1"]) == 2
    assert "unknown tunable 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["bench", "--workload", "nbody"], "valid: stream_once"),
    (["bench", "--policy", "lru"], "valid: static"),
    (["bench", "--profile", "a100"], "available: "),
    (["bench", "--size", "huge"], "cannot parse"),
    (["bench", "--repeat", "0"], "--repeat"),
    (["bench", "--workload", "pingpong", "--json", "/no/such/dir/x.json"], "does not exist"),
    (["trace", "replay", "/no/such/trace.npz"], "does not exist"),
    (["trace", "record", "--workload", "zzz", "-o", "x.npz"], "available"),
    (["demo", "--size", "4KiB"], "at least 3 pages"),
    (["bench", "--workload", "pingpong", "--tunable", "nope=1"], "unknown tunable 'nope'"),
    (["bench", "--workload", "pingpong", "--tunable", "cpu_access"], "NAME=VALUE"),
    (["bench", "--workload", "pingpong", "--tunable", "trace=maybe"], "takes bool"),
    (["bench", "--workload", "pingpong", "--tunable", "cpu_access=x"], "out of range"),
])
def test_clear_errors(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("ccadgpu: error:")


def test_not_a_trace(tmp_path, capsys):
    f = tmp_path / "junk.npz"
    f.write_bytes(b"not a zip")
    assert main(["trace", "replay", str(f)]) == 2
    assert "not a ccadgpu trace" in capsys.readouterr().err
