"""The benchmark program runs end to end on a tiny shape and writes its JSON, table and plot.

Nothing here is timed: benchmarks are programs (`python -m minimoe.bench`), not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from minimoe.bench.report import ratios

FIELDS = {"impl", "shape", "T", "D", "F", "E", "K", "dtype", "device", "device_name"}
FIELDS |= {"ms_median", "tflops", "routing", "repeats", "threads"}


def test_smoke_run_writes_json_md_png(tmp_path: Path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "minimoe.bench", "--smoke", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    impls = {r["impl"] for r in rows}
    assert {"loop", "einsum", "padded_bmm", "grouped_mm", "dense", "router"} <= impls
    assert {"hf-eager", "hf-batched_mm", "hf-grouped_mm"} <= impls  # transformers is a test dep
    for r in rows:
        assert FIELDS <= r.keys(), FIELDS - r.keys()
        assert r["ms_median"] > 0 and r["tflops"] > 0 and r["threads"] == 1
        assert (r["shape"], r["D"], r["F"], r["E"], r["K"]) == ("tiny", 32, 64, 4, 2)
    assert {r["T"] for r in rows} == {1, 16} and {r["routing"] for r in rows} == {
        "uniform",
        "skewed",
    }
    assert result["machine"]["torch_threads"] == 1
    assert any(s["impl"] == "triton" for s in result["skipped"])  # absent or CPU: said, not hidden
    md = out.with_suffix(".md").read_text()
    assert "| T |" in md and "vs HF" in md and "tiny" in md
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_ratios_hand_computed():
    ms = {"loop": 50.0, "einsum": 20.0, "grouped_mm": 10.0, "hf-eager": 30.0, "hf-grouped_mm": 15.0}
    ms["dense"] = 8.0
    r = ratios(ms)
    assert r["best"] == "grouped_mm"
    assert r["vs_hf"] == 1.5 and r["over_dense"] == 1.25 and r["vs_loop"] == 5.0
    only_loop = ratios({"loop": 1.0, "hf-eager": 2.0})
    assert (
        only_loop["best"] == "loop" and only_loop["vs_hf"] == 2.0 and only_loop["vs_loop"] is None
    )
    # the loop is a minimoe implementation: when it is fastest, it is the one compared with HF
    slow_vec = ratios({"loop": 10.0, "grouped_mm": 12.5, "hf-eager": 11.0})
    assert slow_vec["best"] == "loop" and slow_vec["vs_hf"] == 1.1 and slow_vec["vs_loop"] == 0.8
    assert ratios({"hf-eager": 1.0})["best"] is None
