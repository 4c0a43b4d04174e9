"""Plot the kernels' no-regression check: prefix_sharing.py and programs/run.py, each run with
``--cpu-kernels auto`` and ``--cpu-kernels torch`` on the same machine.

    python bench/prefix_sharing.py --systems lpm,fcfs,off --repeats 2 --cpu-kernels auto \\
        --json-out bench/results/prefix_sharing_DATE_native.json     # and torch -> _torch
    python bench/programs/run.py --cpu-kernels auto \\
        --json-out bench/results/programs_DATE_native.json           # and torch -> _torch
    python bench/kernels_noregression_plot.py DATE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict:
    path = RESULTS / name
    if not path.exists():
        sys.exit(f"error: {path} is missing; run the commands in this script's docstring first")
    return json.loads(path.read_text())


def bars(ax, labels: list[str], native: list[float], torch: list[float], title: str, unit: str):
    xs = list(range(len(labels)))
    ax.bar([i - 0.2 for i in xs], native, 0.4, label="native kernels (auto)")
    ax.bar([i + 0.2 for i in xs], torch, 0.4, label="torch path")
    for i in xs:
        ax.text(i, max(native[i], torch[i]) * 1.02, f"{native[i] / torch[i]:.2f}x", ha="center",
                fontsize=7)  # fmt: skip
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=7, rotation=35, ha="right")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=8)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    date = sys.argv[1] if len(sys.argv) > 1 else "2026-12-07"
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ps = {k: load(f"prefix_sharing_{date}_{k}.json")["runs"] for k in ("native", "torch")}
    labels, nat, tor = [], [], []
    for system in ps["native"]:
        for w, r in ps["native"][system]["workloads"].items():
            labels.append(f"{w} {system}")
            nat.append(r["req_s"])
            tor.append(ps["torch"][system]["workloads"][w]["req_s"])
    bars(axes[0], labels, nat, tor, "prefix_sharing.py (Engine, fp32)", "requests/s")
    pg = {k: load(f"programs_{date}_{k}.json")["results"] for k in ("native", "torch")}
    labels, nat, tor = [], [], []
    for prog, systems in pg["native"].items():
        for s, r in systems.items():
            labels.append(f"{prog} {s}")
            nat.append(r["programs_s"])
            tor.append(pg["torch"][prog][s]["programs_s"])
    bars(axes[1], labels, nat, tor, "programs/run.py (server, fp32)", "programs/s")
    fig.suptitle(
        f"Native CPU kernels vs the torch path, same machine, {date} (ratio above each pair)"
    )
    fig.tight_layout()
    out = RESULTS / f"kernels_noregression_{date}.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
