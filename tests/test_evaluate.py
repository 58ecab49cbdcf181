"""vivat.evaluate: typed per-image records, streaming (JSONL, progress, flat memory), bad and tiny images."""

from __future__ import annotations

import gc
import json
import math
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vivat.artifacts import ARTIFACT_SCORES, METRICS, diagnose
from vivat.config import VAEConfig
from vivat.data import center_crop, load_image, save_image
from vivat.errors import InputError
from vivat.evaluate import (
    Evaluation,
    ImageResult,
    evaluate_folder,
    min_image_side,
    reconstruct,
    write_reconstructions,
)
from vivat.metrics import evaluate_pairs, quantize
from vivat.model import AutoencoderKL


@pytest.fixture(scope="module")
def model() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(VAEConfig.from_preset("vivat-tiny")).eval().requires_grad_(False)


def _photos(folder: Path, sizes: list[tuple[int, int]], seed: int = 3) -> list[Path]:
    g = torch.Generator().manual_seed(seed)
    return [save_image(torch.rand(3, h, w, generator=g), folder / f"{i:03d}.png") for i, (h, w) in enumerate(sizes)]


def _png16_rgb(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), written by hand."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


# ---------------------------------------------------------------------------- typed records
def test_records_carry_metrics_scores_and_tensors_only_when_asked(tmp_path, model):
    _photos(tmp_path / "val", [(64, 72), (70, 64)])  # the second is cropped to 64 x 64
    results = list(Evaluation(model, tmp_path / "val", lpips=False, artifacts=True, tensors=True, progress=False))
    assert [r.path.name for r in results] == ["000.png", "001.png"]
    for r in results:
        assert isinstance(r, ImageResult) and set(r.metrics) == set(METRICS) and r.metrics["lpips"] is None
        assert set(r.scores) == set(ARTIFACT_SCORES)
        x, y = r.original, r.reconstruction
        assert tuple(x.shape[-2:]) == r.scored_size and x.shape == y.shape
        assert r.features and all(name.startswith("decoder.") for name in r.features)
        expected = diagnose(x[None], quantize(y[None]), features=r.features)
        for name in ARTIFACT_SCORES:
            assert math.isclose(r.scores[name], expected[name], rel_tol=1e-6, abs_tol=1e-9), name
        pair = evaluate_pairs([x], [y])
        assert r.metrics["psnr"] == pair["psnr"][0] and r.metrics["ssim"] == pair["ssim"][0]
        row = r.row()
        assert (
            row["file"] == str(r.path) and row["scored_size"] == list(r.scored_size) and row["grid"] == r.scores["grid"]
        )
        assert not any(isinstance(v, torch.Tensor) for v in row.values())
    assert results[1].size == (70, 64) and results[1].scored_size == (64, 64) and "center-cropped" in results[1].sizing

    plain = list(Evaluation(model, tmp_path / "val", lpips=False, progress=False))
    assert all(r.original is None and r.reconstruction is None and r.features is None and not r.scores for r in plain)
    assert [r.metrics for r in plain] == [r.metrics for r in results]


def test_report_means_and_rows(tmp_path, model):
    _photos(tmp_path / "val", [(64, 72), (70, 64)])
    report = evaluate_folder(model, tmp_path / "val", lpips=False, artifacts=True, progress=False)
    assert report["n"] == 2 and report["skipped"] == [] and "16 px" in report["small"]
    for name in (*METRICS, *ARTIFACT_SCORES):
        values = [row[name] for row in report["images"]]
        if name == "lpips":
            assert values == [None, None] and report["mean"][name] is None
        else:
            assert report["mean"][name] == pytest.approx(sum(values) / 2, rel=1e-12)
    plain = evaluate_folder(model, tmp_path / "val", lpips=False, progress=False)
    assert "grid" not in plain["mean"] and "grid" not in plain["images"][0]
    assert plain["mean"]["psnr"] == report["mean"]["psnr"]
    ev = Evaluation(model, tmp_path / "val", lpips=False, progress=False)
    ev.run()
    with pytest.raises(RuntimeError, match="runs once"):
        list(ev)


# ---------------------------------------------------------------------------- streaming
def test_jsonl_is_written_as_images_are_scored(tmp_path, model):
    _photos(tmp_path / "val", [(32, 32)] * 3)
    jsonl = tmp_path / "out" / "eval.jsonl"
    ev = Evaluation(model, tmp_path / "val", lpips=False, jsonl=jsonl, progress=False)
    seen = []
    for i, result in enumerate(ev, 1):
        lines = jsonl.read_text().splitlines()
        assert len(lines) == i, "each row is on disk before the next image is evaluated"
        assert json.loads(lines[-1]) == result.row()
        seen.append(result.row())
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == seen == ev.report()["images"]


def test_progress_lines_without_a_terminal(tmp_path, model, capsys):
    _photos(tmp_path / "val", [(16, 16)] * 5)
    evaluate_folder(model, tmp_path / "val", lpips=False, progress=True)
    err = capsys.readouterr().err
    assert "evaluating: 5/5 images" in err  # the last image always reports
    Evaluation(model, tmp_path / "val", lpips=False, progress_every=2).run()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluating:")]
    assert [line.split()[1] for line in lines] == ["2/5", "4/5", "5/5"]
    evaluate_folder(model, tmp_path / "val", lpips=False, progress=False)
    assert capsys.readouterr().err == ""


def _live_tensor_bytes() -> int:
    """Bytes of every tensor storage alive in the process (each storage counted once)."""
    seen, total = set(), 0
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and not obj.is_meta:
            storage = obj.untyped_storage()
            if storage.data_ptr() and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def test_memory_stays_flat_as_the_folder_doubles(tmp_path, model, monkeypatch):
    """Evaluating 2N images does not hold more than evaluating N: peak traced memory (tracemalloc) does
    not double, and the tensors alive while an image is scored do not grow with the folder.

    Tensor memory is torch's, not traced by tracemalloc, so it is counted directly: every storage
    alive each time an image is scored (``evaluate_pairs`` is called once per image). A consumer
    that keeps every result (the control) must show the growth, else the measurement could not see
    what it guards against.
    """
    import vivat.evaluate as evaluate_module

    samples: list[int] = []
    scored = evaluate_module.evaluate_pairs

    def sampling(*args, **kwargs):
        samples.append(_live_tensor_bytes())
        return scored(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate_pairs", sampling)

    def peaks(fn, folder: Path) -> tuple[int, int]:
        samples.clear()
        gc.collect()
        base = _live_tensor_bytes()
        tracemalloc.start()
        try:
            fn(folder)
            traced = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return max(samples) - base, traced

    n, side = 3, 128
    small, large = tmp_path / "small", tmp_path / "large"
    _photos(small, [(side, side)] * n, seed=1)
    _photos(large, [(side, side)] * n, seed=1)
    _photos(large / "more", [(side, side)] * n, seed=2)

    def stream(folder: Path) -> None:
        evaluate_folder(model, folder, lpips=False, artifacts=True, progress=False, jsonl=folder / "rows.jsonl")

    def keep_all(folder: Path) -> None:
        assert len(list(Evaluation(model, folder, lpips=False, tensors=True, progress=False))) >= n

    stream(small)  # warm-up: lazy imports and caches are not part of the measurement
    tensors_n, traced_n = peaks(stream, small)
    tensors_2n, traced_2n = peaks(stream, large)
    kept_n, _ = peaks(keep_all, small)
    kept_2n, _ = peaks(keep_all, large)
    pair = 2 * 3 * side * side * 4  # one original and its reconstruction, float32
    assert kept_2n - kept_n >= 0.9 * n * pair, (kept_n, kept_2n)  # the control grows with the folder
    assert tensors_2n - tensors_n < 0.5 * pair, (tensors_n, tensors_2n)
    assert traced_2n < 1.5 * traced_n, (traced_n, traced_2n)


# ---------------------------------------------------------------------------- bad and small images
@pytest.fixture()
def bad_folder(tmp_path) -> dict[str, Path]:
    root = tmp_path / "mixed"
    good = _photos(root, [(40, 48)])[0]
    data = good.read_bytes()
    files = {"good": good}
    files["corrupt"] = root / "corrupt.png"
    files["corrupt"].write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    files["empty"] = root / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["truncated"] = root / "truncated.png"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["tiny"] = root / "tiny.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(files["tiny"])
    files["gray16"] = root / "gray16.png"
    Image.fromarray(np.linspace(0, 65535, 32 * 40).reshape(32, 40).astype(np.uint16)).save(files["gray16"])
    rgb16 = np.random.default_rng(2).integers(0, 65536, (24, 32, 3)).astype(np.uint16)
    files["rgb16"] = _png16_rgb(root / "rgb16.png", rgb16)
    return files


def test_bad_images_are_skipped_named_once_and_counted(bad_folder, model):
    root = bad_folder["good"].parent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate_folder(model, root, lpips=False, artifacts=True, progress=False)
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"corrupt.png", "empty.jpg", "truncated.png"}
    assert all(reason.startswith("unreadable: ") for reason in skipped.values())
    messages = [
        str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "skipping" in str(w.message)
    ]
    for name in skipped:
        assert sum(name in m for m in messages) == 1, (name, messages)
    rows = {Path(r["file"]).name: r for r in report["images"]}
    assert set(rows) == {"000.png", "tiny.png", "gray16.png", "rgb16.png"} and report["n"] == 4
    side = min_image_side(model)
    assert side == 16 and rows["tiny.png"]["size"] == [10, 10] and rows["tiny.png"]["scored_size"] == [16, 16]
    assert "reflect-padded 10x10 -> 16x16" in rows["tiny.png"]["sizing"] and "reflect-padded" in report["small"]
    assert rows["gray16.png"]["scored_size"] == [32, 40] and rows["rgb16.png"]["scored_size"] == [24, 32]
    for row in rows.values():
        assert math.isfinite(row["psnr"]) and math.isfinite(row["ssim"]) and math.isfinite(row["grid"])

    rule = evaluate_folder(model, root, lpips=False, small="skip", progress=False)
    skipped = {Path(s["path"]).name: s["reason"] for s in rule["skipped"]}
    assert "10x10 is smaller than 16 px" in skipped["tiny.png"] and "skipped" in rule["small"]


def test_the_16_bit_images_keep_their_levels(bad_folder):
    gray = load_image(bad_folder["gray16"])
    assert gray.shape == (3, 32, 40) and float(gray.max()) == 1.0 and float(gray.min()) == 0.0
    assert len(torch.unique(gray[0])) > 1000  # more levels than 8 bits could hold
    rgb = load_image(bad_folder["rgb16"])
    assert rgb.shape == (3, 24, 32) and 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0


def test_a_tiny_image_reconstructs_without_an_internal_padding_error(model):
    image = torch.rand(3, 10, 10)
    for sizing in ("crop", "pad"):
        x, y, how = reconstruct(model, image, sizing)
        assert x.shape == y.shape == (3, 16, 16) and "under 16 px" in how
        assert torch.equal(center_crop(x, 10), image)  # the image sits in the middle of its padding
    with pytest.raises(ValueError, match="smaller than 16 px"):
        reconstruct(model, image, small="skip")


def test_everything_unreadable_is_one_named_error(tmp_path, model):
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"none of the 1 image\(s\).*a\.png"), pytest.warns(RuntimeWarning):
        evaluate_folder(model, tmp_path, lpips=False, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        Evaluation(model, tmp_path / "nope")
    with pytest.raises(ValueError, match="sizing"):
        Evaluation(model, tmp_path, sizing="stretch")


def test_reconstruct_writes_the_good_and_returns_the_skipped(bad_folder, tmp_path, model):
    files = [bad_folder[k] for k in ("good", "corrupt", "empty", "tiny")]
    with pytest.warns(RuntimeWarning, match="skipping"):
        result = write_reconstructions(model, files, tmp_path / "recon")
    assert [Path(r["file"]).name for r in result] == ["000.png", "tiny.png"] and len(result) == 2
    assert {s.path.name for s in result.skipped} == {"corrupt.png", "empty.jpg"}
    for r in result:
        assert Path(r["reconstruction"]).is_file() and Path(r["side_by_side"]).is_file()
    assert load_image(result.written[1]["reconstruction"]).shape == (3, 10, 10)  # padded, then cropped back
    with pytest.raises(InputError, match="could be reconstructed"), pytest.warns(RuntimeWarning):
        write_reconstructions(model, [bad_folder["corrupt"]], tmp_path / "recon2")
