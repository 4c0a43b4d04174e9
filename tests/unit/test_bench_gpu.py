"""``bench/gpu.py --shape tiny --device cpu``: every phase runs end to end and reports what the
GPU run will report (the numbers of a tiny CPU model mean nothing; the bookkeeping does)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_gpu_bench_tiny_smoke(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    # Fixtures from the repo only: the GPT-2 tokenizer, and a small ShareGPT file.
    dataset = tmp_path / "sharegpt.json"
    words = "cat dog tree house river stone cloud light story garden window winter".split()
    turns = [" ".join(words[(i + k) % 12] + str(k) for k in range(48)) for i in range(12)]
    dataset.write_text(
        json.dumps([{"conversations": [{"from": "human", "value": t}]} for t in turns])
    )
    cmd = [
        sys.executable, str(BENCH / "gpu.py"), "--shape", "tiny", "--device", "cpu",
        "--tokenizer", str(BENCH.parent / "tests" / "fixtures" / "gpt2"), "--dataset", str(dataset),
        "--num-prompts", "8", "--concurrency", "2,4", "--output-len", "6",
        "--batch1-output-len", "8", "--prefix-len", "64", "--prefix-requests", "4",
        "--json-out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["batch1"]["decode_tok_s"] > 0
    assert 0 < report["batch1"]["roofline_share"] < 1
    runs = report["throughput"]
    assert set(runs) == {"c2", "c4", "c2_no_overlap"}
    for r in runs.values():
        assert r["output_tokens"] == 8 * 6
        assert 0 <= r["idle_share"] <= 1
    assert runs["c4"]["max_running_requests"] == 4
    prefix = report["prefix"]
    assert prefix["radix_on"]["cached_tokens"] == 3 * 64  # all but the first hit the prefix
    assert prefix["radix_off"]["cached_tokens"] == 0
    assert set(report["verdicts"]) == {
        "batch1_tok_s",
        "output_tok_s",
        "prefix_ratio",
        "overlap_ratio",
    }
    assert "shared prefix radix on / off" in proc.stdout
