"""Tests for ``vivat diagnose``: the figure makers on synthetic residuals, and the HTML/JSON report
of a random-init tiny model (alone and against a baseline) on small photo crops."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from vivat.artifacts import ARTIFACT_SCORES as SCORES
from vivat.artifacts import METRICS
from vivat.cli import main
from vivat.config import VAEConfig
from vivat.diagnose import WorstImages
from vivat.evaluate import ImageResult
from vivat.model import AutoencoderKL
from vivat.report.figures import (
    droplet_figure,
    droplet_map,
    heatmap,
    make_pictures,
    residual_map,
    residual_spectrum,
    spectrum_figure,
)

ODD_NAME = "a&b <x>"  # must come out HTML-escaped


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _scores_body(page: str) -> str:
    """The rows of the report's score table."""
    return page.split('<table class="scores">')[1].split("<tbody>")[1].split("</tbody>")[0]


# ----------------------------------------------------------------------------- figure makers
def _photo(size: int = 64) -> torch.Tensor:
    arr = skimage.data.astronaut()[100 : 100 + size, 150 : 150 + size]
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


@pytest.mark.parametrize("max_side", [None, 32])
def test_lattice_residual_peaks_on_the_marked_frequencies(max_side):
    x = _photo() * 0.8 + 0.1
    tile = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) - 0.5
    x_hat = x + 0.04 * tile.repeat(1, 8, 8)
    spec = residual_spectrum(x, x_hat, max_side=max_side)
    assert len(spec.markers) == 63 and spec.dc not in spec.markers
    db = spec.db.copy()
    db[spec.dc] = -np.inf
    peak = np.unravel_index(np.argmax(db), db.shape)
    assert tuple(int(v) for v in peak) in set(spec.markers)
    if max_side is None:
        assert spec.db.shape == (64, 64) and spec.dc == (32, 32)
        assert {r for r, _ in spec.markers} == set(range(0, 64, 8))
        # away from the lattice the residual has (almost) no energy
        off = np.ones(db.shape, dtype=bool)
        off[tuple(np.array(spec.markers).T)] = False
        off[spec.dc] = False
        assert db[off].max() < min(spec.db[m] for m in spec.markers) - 40
    else:
        assert spec.db.shape == (32, 32)
    fig = spectrum_figure(spec, lo=-20, hi=float(db.max()), scale=2)
    assert fig.dtype == np.uint8 and fig.shape == (2 * db.shape[0], 2 * db.shape[1], 3)
    r, c = spec.markers[0]
    ring = fig[max(0, 2 * r - 4) : 2 * r + 6, max(0, 2 * c - 4) : 2 * c + 6]
    assert (ring == np.array([255, 60, 60], dtype=np.uint8)).all(-1).any(), "no red circle at a lattice point"


def test_spectrum_rejects_sizes_off_the_lattice():
    with pytest.raises(ValueError, match="multiples of 8"):
        residual_spectrum(torch.zeros(3, 60, 64), torch.zeros(3, 60, 64))


def test_heatmap_is_brightest_where_the_residual_is():
    x = _photo()
    x_hat = x.clone()
    x_hat[:, 40:46, 12:18] = (x_hat[:, 40:46, 12:18] + 0.3).clamp(0, 1)
    res = residual_map(x, x_hat)
    assert res.shape == (64, 64) and res[42, 14] > 0.1 and res[5, 5] == 0
    img = heatmap(res * 255, vmax=80.0)
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    luma = img.astype(float) @ np.array([0.2126, 0.7152, 0.0722])
    r, c = np.unravel_index(np.argmax(luma), luma.shape)
    assert 40 <= r < 46 and 12 <= c < 18
    assert (img[0, 0] == heatmap(np.zeros((1, 1)), 1.0)[0, 0]).all()  # zero residual: the darkest colour
    ramp = heatmap(np.linspace(0, 1, 256)[None], 1.0)[0].astype(float) @ np.array([0.2126, 0.7152, 0.0722])
    assert (np.diff(ramp) >= -1.0).all() and ramp[-1] > ramp[0] + 200  # brightness rises with the value


def test_droplet_map_names_the_spiked_layer_and_finds_the_spike():
    g = torch.Generator().manual_seed(0)
    features = {
        "decoder.a.norm1": torch.randn(1, 16, 16, 16, generator=g),
        "decoder.b.norm2": torch.randn(1, 16, 16, 16, generator=g),
    }
    features["decoder.b.norm2"][0, 3, 5, 9] = 60.0
    z, layer, score = droplet_map(features)
    assert layer == "decoder.b.norm2" and score > 30
    assert np.unravel_index(np.argmax(z), z.shape) == (5, 9) and z.max() > 30
    big, _, _ = droplet_map(features, size=(32, 32))
    r, c = np.unravel_index(np.argmax(big), big.shape)
    assert (r // 2, c // 2) == (5, 9)
    small, _, _ = droplet_map(features, size=(8, 8))
    assert np.unravel_index(np.argmax(small), small.shape) == (2, 4) and small.max() == pytest.approx(z.max())
    fig = droplet_figure(z, vmax=20.0, scale=4)
    assert fig.shape == (64, 64, 3) and (fig[21, 37] == heatmap(np.array([[20.0]]), 20.0)[0, 0]).all()
    ring = fig[14:30, 30:46]
    assert (ring == np.array([0, 220, 255], dtype=np.uint8)).all(-1).any(), "no circle around the spike"


def test_pictures_of_a_padded_image_show_only_the_image():
    """With sizing "pad" the decoder saw the image padded to 64x104: the map is cropped back."""
    x = _photo(64)[:, :60, :]
    x = torch.cat([x, x[:, :, :36]], dim=2)  # 60x100
    features = {"decoder.up.0.norm": torch.randn(1, 4, 64, 104, generator=torch.Generator().manual_seed(0))}
    features["decoder.up.0.norm"][0, 1, 62, 50] = 80.0  # in the padding: not shown
    features["decoder.up.0.norm"][0, 2, 30, 20] = 40.0
    pics = make_pictures(x, x.clone(), features)
    assert pics.original.shape == pics.reconstruction.shape == (60, 100, 3)
    assert pics.residual.shape == (60, 100) and pics.residual.max() == 0
    assert pics.droplet.shape == (60, 100) and np.unravel_index(np.argmax(pics.droplet), (60, 100)) == (30, 20)
    assert pics.droplet_layer == "decoder.up.0.norm" and pics.spectrum.db.shape == (56, 96)


def test_worst_images_hold_a_bounded_set_of_pictures():
    """Pictures are kept for the current top-k of each score (and included files) only."""
    keeper = WorstImages(2, include=["7.png"])
    g = torch.Generator().manual_seed(0)
    held = []
    for i in range(12):
        x = torch.rand(3, 32, 32, generator=g)
        scores = {name: 0.0 for name in SCORES} | {"grid": float(i % 5 + 1)}
        metrics = {"psnr": 30.0, "ssim": 0.9, "lpips": None}
        result = ImageResult(Path(f"{i}.png"), (32, 32), (32, 32), "", metrics, scores, x, x.clone(), {})
        keeper.add(result)
        held.append(len(keeper.pictures))
    assert max(held) <= 3 and set(keeper.pictures) == {"4.png", "9.png", "7.png"}
    assert keeper.worst(4) == [
        {"file": "4.png", "why": ["highest grid"]},
        {"file": "9.png", "why": ["2nd highest grid"]},
    ]
    bare = ImageResult(Path("a.png"), (32, 32), (32, 32), "", {}, {"grid": 9.0})
    with pytest.raises(ValueError, match="tensors=True"):
        WorstImages(1).add(bare)


# ----------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diagnose")
    torch.manual_seed(0)
    AutoencoderKL(VAEConfig.from_preset("vivat-tiny")).save_pretrained(root / "model")
    torch.manual_seed(1)
    AutoencoderKL(VAEConfig.from_preset("ldm-tiny")).save_pretrained(root / "baseline")
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()[100:164, 150:214]).save(data / f"{ODD_NAME}.png")
    Image.fromarray(skimage.data.coffee()[100:172, 200:300]).save(data / "sub" / "coffee.png")  # 72x100
    return {"root": root, "model": root / "model", "baseline": root / "baseline", "data": data}


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report")
    code = main(["diagnose", "--model", str(setup["model"]), "--data", str(setup["data"]), "--out", str(out)])
    assert code == 0
    return {
        "out": out,
        "html": (out / "report.html").read_text(),
        "json": json.loads((out / "report.json").read_text()),
    }


@pytest.fixture(scope="module")
def compared(setup, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("compare")
    (out / "figures").mkdir()
    for name in ("09-from-an-earlier-report.png", "notes.png"):  # the first is replaced, the second kept
        (out / "figures" / name).write_bytes(b"")
    argv = ["diagnose", "--model", str(setup["model"]), "--baseline", str(setup["baseline"])]
    code = main([*argv, "--data", str(setup["data"]), "--out", str(out), "--worst", "1", "--no-lpips"])
    assert code == 0
    return {
        "out": out,
        "html": (out / "report.html").read_text(),
        "json": json.loads((out / "report.json").read_text()),
    }


def test_report_html_is_self_contained_with_a_row_per_image(single):
    page = single["html"]
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    assert "data:image/png;base64," in page
    tbody = _scores_body(page)
    assert tbody.count("<tr") == 3  # two images and the mean
    assert "sub/coffee.png" in tbody
    assert "a&amp;b &lt;x&gt;.png" in tbody and ODD_NAME not in page
    for name in (*METRICS, *SCORES):
        assert name in page
    assert "LPIPS n/a" in page or "n/a" not in tbody  # missing LPIPS is explained
    for label in ("Original", "Reconstruction", "Residual", "spectrum", "Droplet features", "lattice"):
        assert label in page


def test_report_json_has_every_number_and_consistent_means(single):
    report = single["json"]
    model = report["model"]
    assert model["n"] == len(model["images"]) == 2
    for row in model["images"]:
        for name in (*METRICS, *SCORES):
            value = row[name]
            assert (name == "lpips" and value is None) or math.isfinite(value), (name, value)
    for name in (*METRICS, *SCORES):
        values = [row[name] for row in model["images"]]
        if values[0] is None:
            assert model["mean"][name] is None
        else:
            assert model["mean"][name] == pytest.approx(sum(values) / len(values))
    assert set(report["definitions"]) == {*METRICS, *SCORES}
    assert report["baseline"] is None and report["settings"]["sizing_mode"] == "pad"  # the CLI default
    assert 1 <= len(report["worst"]) <= 4
    rows = {row["file"]: row for row in model["images"]}
    for item in report["worst"]:
        assert item["why"]
        for why in item["why"]:  # "highest grid" or, for a runner-up, "2nd highest grid"
            rank = 0 if why.startswith("highest ") else int(why[0]) - 1
            name = why.split("highest ")[1]
            ranked = sorted((row[name] for row in model["images"]), reverse=True)
            assert rows[item["file"]][name] == ranked[rank] > 0
    for rel in report["figures"]:
        assert (single["out"] / rel).is_file()


def test_baseline_adds_both_models_side_by_side(compared, capsys):
    page, report = compared["html"], compared["json"]
    n_cols = len(METRICS) + len(SCORES)
    assert page.count('<th class="sub">baseline</th>') == n_cols
    assert page.count('<th class="sub">model</th>') == n_cols
    tbody = _scores_body(page)
    first_row = tbody.split("</tr>")[0]
    assert first_row.count("<td") == 1 + 2 * n_cols
    assert report["baseline"] is not None and report["baseline"]["dir"].endswith("baseline")
    assert [r["file"] for r in report["baseline"]["images"]] == [r["file"] for r in report["model"]["images"]]
    assert len(report["worst"]) == 1
    figures = report["figures"]
    assert any("baseline-reconstruction" in f for f in figures) and any("model-reconstruction" in f for f in figures)
    assert page.count("Reconstruction (uint8)") == 2
    on_disk = sorted(p.name for p in (compared["out"] / "figures").iterdir())
    assert on_disk == sorted([*(Path(f).name for f in figures), "notes.png"])


def test_diagnose_bad_paths_name_the_flag(setup, tmp_path, capsys):
    missing = str(tmp_path / "nope")
    code, _, err = run_cli(
        capsys, "diagnose", "--model", missing, "--data", str(setup["data"]), "--out", str(tmp_path / "o")
    )
    assert code == 2 and "--model" in err and "does not exist" in err
    code, _, err = run_cli(
        capsys, "diagnose", "--model", str(setup["model"]), "--data", missing, "--out", str(tmp_path / "o")
    )
    assert code == 2 and "--data" in err
    code, _, err = run_cli(
        capsys,
        *("diagnose", "--model", str(setup["model"]), "--data", str(setup["data"])),
        *("--out", str(tmp_path / "o"), "--baseline", missing),
    )
    assert code == 2 and "--baseline" in err
    code, out, _ = run_cli(capsys, "diagnose", "--help")
    assert code == 0
    flags = ["--model", "--data", "--out", "--baseline", "--max-side", "--worst", "--no-lpips", "--device"]
    assert all(flag in out for flag in [*flags, "--sizing"])
