"""Turn a ``ccadgpu bench --json`` file into the markdown table of benchmarks/README.md.

    python benchmarks/bench_table.py bench.json
"""
import json
import sys


def main(path: str) -> None:
    doc = json.load(open(path))
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


if __name__ == "__main__":
    main(sys.argv[1])
