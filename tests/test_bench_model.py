"""bench/bench_model.py end to end on CPU at a tiny size: rows, fields, fused-vs-eager agreement."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_model", REPO / "bench" / "bench_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_model_cpu_rows(tmp_path):
    bench = load_bench()
    argv = [
        "--device",
        "cpu",
        "--sizes",
        "64",
        "--train-size",
        "64",
        "--train-batch",
        "1",
        "--warmup",
        "0",
        "--reps",
        "1",
        "--rounds",
        "1",
        "--no-compile",
        "--out",
        str(tmp_path),
    ]
    assert bench.main(argv) == 0

    (jpath,) = tmp_path.glob("model-*-cpu.json")
    (mpath,) = tmp_path.glob("model-*-cpu.md")
    payload = json.loads(jpath.read_text())
    rows = payload["rows"]
    variants = ("eager", "torch-backend", "fused", "eager-cl", "fused-cl")
    assert [(r["case"], r["variant"]) for r in rows] == [(c, v) for c in ("decode", "train") for v in variants]
    assert payload["settings"]["preset"] == "vivat-tiny" and payload["settings"]["compile"] is False
    for r in rows:
        assert r["shape"] == "1x64²" and r["dtype"] == "float32"
        for key in ("ms", "images_per_s", "first_call_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["case"], r["variant"], key, r[key])
        assert math.isclose(r["images_per_s"], 1e3 / r["ms"])
        assert r["peak_mb"] is None and r["mem_x_eager"] is None  # memory is CUDA only
        assert r["x_compile"] is None  # --no-compile
        if r["variant"] == "eager":
            assert r["x_eager"] is None and r["max_abs_diff"] is None
        else:
            assert math.isfinite(r["x_eager"]) and r["x_eager"] > 0
            assert 0 <= r["max_abs_diff"] < 1e-4, (r["case"], r["variant"], r["max_abs_diff"])
        if r["variant"] == "fused":
            want = "time >=1.3x eager: " if r["case"] == "decode" else "time >=1.0x eager: "
            assert r["target"].startswith(want) and r["target"].endswith(("yes", "no"))
        else:
            assert r["target"] is None
    # the fused variants state which reflect-conv design auto picked (per case)
    assert [n.split(":")[0] for n in payload["notes"]] == ["decode 1x64²", "train 1x64²"]
    assert all("reflect conv" in n and "auto" in n for n in payload["notes"])
    markdown = mpath.read_text()
    assert "## Decode" in markdown and "## Training step" in markdown and "perceptual_weight=0" in markdown
