"""Turn a ``ccadgpu bench --json`` file into the markdown table of benchmarks/README.md, or
compare two such files row by row.

    python benchmarks/bench_table.py bench.json
    python benchmarks/bench_table.py live_cuda.json --against standin.json

``--against``: for the rows both files hold (same workload, profile and policy), the modeled
milliseconds of each and their ratio, then how many rows agree within 1% and 3% and whether
every run verified its results (how `gpu_check.sh` sets a live GPU run beside the stand-in).
Exit status 1 if a run of either file failed its check, or if no row is in both.
"""
import argparse
import json


def table(doc: dict) -> None:
    print(f"`{doc['command']}` — {doc['date']}, {doc['machine']}, ccadgpu {doc['ccadgpu']}\n")
    cols = ["workload", "profile", "policy", "modeled ms", "GB/s", "migrated MiB", "by cause",
            "remote", "thrash", "p50 us", "p99 us", "dev peak", "wall s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in doc["rows"]:
        cause = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in r["migrated_bytes_by_cause"].items())
        print("| " + " | ".join([
            r["workload"], r["profile"], r["policy"] + ("" if r["verified"] else " (FAILED)"),
            f"{r['modeled_s'] * 1e3:.3f}", f"{r['throughput_gbps']:.1f}",
            f"{r['migrated_bytes'] / 2**20:.1f}", cause or "-", f"{r['remote_fraction']:.0%}",
            str(r["thrashing_pages"]), f"{r['epoch_p50_s'] * 1e6:.1f}",
            f"{r['epoch_p99_s'] * 1e6:.1f}", str(r["device_peak_pages"]),
            f"{r['wall_s']:.2f}"]) + " |")


def compare(a: dict, b: dict) -> bool:
    key = lambda r: (r["workload"], r["profile"], r["policy"])  # noqa: E731
    other = {key(r): r for r in b["rows"]}
    print(f"A: `{a['command']}` ({a['machine']})\nB: `{b['command']}` ({b['machine']})\n")
    print("| workload | profile | policy | A modeled ms | B modeled ms | A/B | A moved MiB | "
          "B moved MiB | verified |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios, ok, alone = [], True, []
    for r in a["rows"]:
        s = other.get(key(r))
        if s is None:
            alone.append(" / ".join(key(r)))
            continue
        q = r["modeled_s"] / s["modeled_s"] if s["modeled_s"] else float("nan")
        ratios.append(q)
        v = r["verified"] and s["verified"]
        ok &= v
        print(f"| {' | '.join(key(r))} | {r['modeled_s'] * 1e3:.3f} | {s['modeled_s'] * 1e3:.3f} "
              f"| {q:.3f} | {r['migrated_bytes'] / 2**20:.1f} | {s['migrated_bytes'] / 2**20:.1f} "
              f"| {'yes' if v else 'NO'} |")
    near = lambda tol: sum(abs(q - 1) <= tol for q in ratios)  # noqa: E731
    print(f"\n{len(ratios)} rows in both: {near(0.001)} equal (0.1%), {near(0.01)} within 1%, "
          f"{near(0.03)} within 3%; every result verified: {'yes' if ok else 'NO'}")
    if alone:
        print(f"only in A ({len(alone)}): {', '.join(alone)}")
    return ok and bool(ratios)


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("bench_json")
    ap.add_argument("--against", metavar="OTHER_JSON")
    a = ap.parse_args(argv)
    doc = json.load(open(a.bench_json))
    if a.against:
        return 0 if compare(doc, json.load(open(a.against))) else 1
    table(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
