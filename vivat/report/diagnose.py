"""The ``vivat diagnose`` report: ``report.html`` (self-contained), ``report.json`` and ``figures/*.png``.

:func:`write_report` renders what :func:`vivat.diagnose.diagnose_model` computed (and, given a
baseline's result on the same images, the two models side by side). Images are base64 data URIs,
the CSS is inline, there is no script and nothing is fetched from the network.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import ARTIFACT_SCORES, HIGHER_IS_BETTER, REFERENCE_LEVELS, REPORT_COLUMNS
from .figures import INFERNO, MIN_DISPLAY_SIDE, droplet_figure, heatmap, nice_ceil, spectrum_figure
from .html import data_uri, figure, png_bytes

__all__ = ["DEFINITIONS", "format_value", "summary_line", "write_report"]

# One line per number: unit, then meaning (docs/ARTIFACTS.md has the full definitions).
DEFINITIONS: dict[str, str] = {
    "psnr": "dB, higher is better: 10·log10(1/MSE) on [0, 1], per image, reconstruction quantised to uint8",
    "ssim": "higher is better (1 = identical): Gaussian window 11, σ 1.5, data range 1, on RGB",
    "lpips": "LPIPS(alex), lower is better: learned perceptual distance",
    "color_shift": "ΔE76 between the mean colours of original and reconstruction over the interior "
    "(≈1–2 is just noticeable)",
    "grid": "grey levels RMS of the residual's excess period-8 pattern: power at the lattice frequencies "
    "k/8 cycles/px above the surrounding spectrum",
    "blur": "fraction of fine detail (above 1/4 cycle/px) lost, after matching contrast; 1 = all of it",
    "border": "excess mean error in the 8-px border band over what the interior's error-vs-detail fit "
    "predicts (ratio − 1)",
    "corner": "the same as border, for the four 16×16 corner squares",
    "droplet": "robust z (spreads above the median) of the worst 16×16 window of the low-passed residual: "
    "a local blob of error",
    "droplet_features": "largest decoder activation spike: max |a − median| over the channel's robust "
    "spread, 99.9th percentile over channels, max over decoder norm inputs (normal: 3.5–5)",
}


def format_value(name: str, v: float | None) -> str:
    """A number of the report as shown in its tables: n/a, a clean 0, or the digits the number needs."""
    if v is None:
        return "n/a"
    if v == 0 and name not in HIGHER_IS_BETTER:
        return "0"
    digits = {"psnr": 2, "ssim": 4, "lpips": 4, "blur": 3, "border": 3, "corner": 3}
    return f"{v:.{digits.get(name, 2)}f}"


def _better(name: str, a: float | None, b: float | None) -> int:
    """-1 if ``a`` is better, 1 if ``b`` is, 0 for a tie or a missing value."""
    if a is None or b is None or a == b:
        return 0
    return -1 if (a > b) == (name in HIGHER_IS_BETTER) else 1


def _cell(name: str, v: float | None, better: bool = False) -> str:
    classes = []
    if v is not None and name in REFERENCE_LEVELS and v > REFERENCE_LEVELS[name]:
        classes.append("above")
    if better:
        classes.append("better")
    cls = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{cls}>{format_value(name, v)}</td>"


_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px;
       color: #1b1b1b; background: #fff; max-width: 1380px; }
h1 { font-size: 22px; margin: 0 0 6px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #444; margin: 2px 0; } code { font-size: 12.5px; background: #f3f3f3; padding: 0 3px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d6d6d6; padding: 3px 6px; }
td { text-align: right; white-space: nowrap; } td.file, td.def, th.file { text-align: left; }
td.file, td.def { white-space: normal; } td.file { min-width: 110px; max-width: 220px; overflow-wrap: anywhere; }
td.file small { color: #666; }
thead th { background: #f1f1f1; font-weight: 600; }
th.sub { font-weight: 500; font-size: 12px; color: #555; }
tr.mean td { font-weight: 700; background: #fafafa; border-top: 2px solid #999; }
td.above { background: #fde2dc; } td.better { font-weight: 700; color: #0b6b2e; }
table.scores td, table.scores th { font-size: 12.5px; }
table.defs td { vertical-align: top; } table.defs td.name { text-align: left; font-family: monospace; }
.legend span { display: inline-block; padding: 0 6px; margin-right: 8px; }
.block { margin: 10px 0 26px; }
.panels { display: grid; grid-template-columns: 80px repeat(5, minmax(0, 1fr)); gap: 8px; align-items: start; }
.rowlabel { font-weight: 700; writing-mode: vertical-rl; transform: rotate(180deg); text-align: center;
            align-self: center; color: #333; }
figure { margin: 0; } figure img { width: 100%; max-width: 256px; height: auto; display: block;
         border: 1px solid #ccc; image-rendering: pixelated; }
figcaption { font-size: 12px; color: #333; margin-top: 3px; }
figcaption img.bar { display: inline-block; width: 90px; height: 9px; vertical-align: middle; border: 1px solid #999;
                     image-rendering: auto; }
.why { color: #8a1c00; font-weight: 600; }
.note { color: #555; font-size: 13px; }
"""


def _colorbar() -> str:
    return data_uri(png_bytes(np.repeat(INFERNO[None], 8, axis=0)))


class _Figures:
    """Renders the figure blocks of the worst images, writing each PNG under ``figures/``."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "figures"
        self.paths: list[str] = []
        self.bar = _colorbar()
        # figures of an earlier report in the same folder would otherwise linger next to these
        for old in self.dir.glob("[0-9][0-9]-*.png"):
            old.unlink()

    def uri(self, arr: np.ndarray, stem: str) -> str:
        png = png_bytes(arr)
        path = self.dir / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        self.paths.append(path.relative_to(self.dir.parent).as_posix())
        return data_uri(png)

    def block(self, index: int, item: dict[str, Any], runs: list[tuple[str, dict[str, Any]]]) -> str:
        """Rows of panels for one image, one row per (label, result) in ``runs``."""
        pics = [(label, run["pictures"][item["file"]]) for label, run in runs]
        residual_max = max(float(np.percentile(p.residual, 99.5)) for _, p in pics)
        vmax = min(nice_ceil(max(residual_max, 1.0)), 255.0)
        ranges = [p.spectrum.range() for _, p in pics]
        lo, hi = min(r[0] for r in ranges) - 10.0, max(r[1] for r in ranges)
        zs = [float(p.droplet.max()) for _, p in pics if p.droplet is not None]
        zmax = nice_ceil(max([10.0, *zs]))
        h, w = pics[0][1].original.shape[:2]
        scale = max(1, MIN_DISPLAY_SIDE // max(h, w))
        stem = f"{index:02d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(item['name']).stem)[:60]}"

        def big(arr: np.ndarray) -> np.ndarray:
            return np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)

        bar = f'<img class="bar" src="{self.bar}" alt="colour scale">'
        rows = []
        for label, p in pics:
            tag = "" if len(runs) == 1 else f"-{label}"
            name = f"{label} {item['name']}"
            panels = [f'<div class="rowlabel">{html.escape(label)}</div>']
            if label == runs[0][0]:
                panels.append(
                    figure(self.uri(big(p.original), f"{stem}-original"), f"original {item['name']}", "Original")
                )
            else:
                panels.append("<div></div>")
            panels.append(
                figure(
                    self.uri(big(p.reconstruction), f"{stem}{tag}-reconstruction"),
                    f"reconstruction, {name}",
                    "Reconstruction (uint8)",
                )
            )
            panels.append(
                figure(
                    self.uri(big(heatmap(p.residual, vmax)), f"{stem}{tag}-residual"),
                    f"residual heat map, {name}",
                    f"Residual |x̂ − x|, RMS over RGB: 0 {bar} {vmax:g} grey levels",
                )
            )
            panels.append(
                figure(
                    self.uri(spectrum_figure(p.spectrum, lo, hi, scale), f"{stem}{tag}-spectrum"),
                    f"residual spectrum, {name}",
                    f"Residual spectrum (luminance, log power, black {lo:.0f} dB, white {hi:.0f} dB, "
                    "DC at centre). <span style='color:#d22'>○</span> lattice frequencies k/8 cycles/px",
                )
            )
            if p.droplet is None:
                panels.append("<figure><figcaption>no decoder feature maps recorded</figcaption></figure>")
            else:
                panels.append(
                    figure(
                        self.uri(droplet_figure(p.droplet, zmax, scale), f"{stem}{tag}-droplet"),
                        f"droplet feature map, {name}",
                        f"Droplet features: <code>{html.escape(p.droplet_layer or '')}</code> "
                        f"(spikiest map, score {p.droplet_score:.1f}): max over channels of |a − median| / "
                        f"spread, 0 {bar} {zmax:g}; <span style='color:#08c'>○</span> largest "
                        f"({float(p.droplet.max()):.0f})",
                    )
                )
            rows.append("".join(panels))
        return f'<div class="panels">{"".join(rows)}</div>'


def _scores_table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """Per-image table (one row per image, a column per number; two sub-columns with a baseline)."""
    cols = REPORT_COLUMNS
    pair = len(runs) == 2
    span = ' rowspan="2"' if pair else ""
    head = f'<tr><th class="file"{span}>image (scored size)</th>'
    head += "".join(f'<th colspan="{len(runs)}">{c}</th>' for c in cols) + "</tr>"
    if pair:
        head += "<tr>" + "".join(f'<th class="sub">{html.escape(label)}</th>' for c in cols for label, _ in runs)
        head += "</tr>"
    body = []
    rows = [run["images"] for _, run in runs]
    for i, row in enumerate(rows[0]):
        size = "×".join(str(s) for s in row["scored_size"][::-1])
        cells = [f'<td class="file">{html.escape(row["name"])} <small>{size}</small></td>']
        for c in cols:
            values = [r[i][c] for r in rows]
            cmp = _better(c, *values) if pair else 0
            cells.extend(_cell(c, v, better=cmp == (k * 2 - 1)) for k, v in enumerate(values))
        body.append(f"<tr>{''.join(cells)}</tr>")
    cells = [f'<td class="file">mean of {len(rows[0])}</td>']
    for c in cols:
        values = [run["mean"][c] for _, run in runs]
        cmp = _better(c, *values) if pair else 0
        cells.extend(_cell(c, v, better=cmp == (k * 2 - 1)) for k, v in enumerate(values))
    body.append(f'<tr class="mean">{"".join(cells)}</tr>')
    return f'<table class="scores"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _definitions_table() -> str:
    rows = []
    for name in REPORT_COLUMNS:
        ref = REFERENCE_LEVELS.get(name)
        rows.append(
            f'<tr><td class="name">{name}</td><td class="def">{html.escape(DEFINITIONS[name])}</td>'
            f"<td>{'' if ref is None else f'{ref:g}'}</td></tr>"
        )
    return (
        '<table class="defs"><thead><tr><th>number</th><th class="file">what it measures</th>'
        f"<th>reference level</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _skipped_note(skipped: list[dict[str, str]]) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li><code>{html.escape(s['path'])}</code>: {html.escape(s['reason'])}</li>" for s in skipped)
    return f'<p class="note">{len(skipped)} file(s) skipped, not scored:</p><ul class="note">{items}</ul>'


def _json_run(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dir": run["model"],
        "n": run["n"],
        "mean": run["mean"],
        "images": run["images"],
        "skipped": run["skipped"],
        "settings": run["settings"],
    }


def write_report(
    out_dir: str | os.PathLike, result: Mapping[str, Any], baseline_result: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``report.html``, ``report.json`` and ``figures/*.png`` to ``out_dir`` (created).

    ``result`` (and ``baseline_result``, run on the same images with ``include`` = the worst
    files of ``result``) come from :func:`diagnose_model`. Returns ``{"html", "json", "figures"}``.
    """
    out = Path(out_dir)
    runs: list[tuple[str, Mapping[str, Any]]] = [("model", result)]
    if baseline_result is not None:
        files = [r["file"] for r in result["images"]]
        if [r["file"] for r in baseline_result["images"]] != files:
            raise ValueError("the baseline was scored on other images than the model; run both on the same data")
        missing = [w["file"] for w in result["worst"] if w["file"] not in baseline_result["pictures"]]
        if missing:
            raise ValueError(f"the baseline result has no pictures of {missing}; pass include= the model's worst files")
        runs = [("baseline", baseline_result), ("model", result)]
    out.mkdir(parents=True, exist_ok=True)
    figures = _Figures(out)
    # the model under diagnosis first in the figures, its baseline below
    fig_runs = [runs[-1], *runs[:-1]]
    blocks = []
    for i, item in enumerate(result["worst"], 1):
        lines = []
        for label, run in fig_runs:
            row = next(r for r in run["images"] if r["file"] == item["file"])
            lines.append(f"{label}: " + ", ".join(f"{n} {format_value(n, row[n])}" for n in ARTIFACT_SCORES))
        blocks.append(
            f'<div class="block"><h3>{i}. {html.escape(item["name"])} — '
            f'<span class="why">{html.escape(", ".join(item["why"]))}</span></h3>'
            f'<p class="meta">{"<br>".join(lines)}</p>{figures.block(i, item, fig_runs)}</div>'
        )

    def who(run: Mapping[str, Any]) -> str:
        return html.escape(str(run["model"] or "(unnamed model)"))

    lpips = result["settings"]["lpips"]
    lpips_note = (
        f'<p class="note">LPIPS n/a: {html.escape(lpips.removeprefix("unavailable: "))}</p>'
        if result["mean"]["lpips"] is None
        else ""
    )
    legend = (
        '<p class="legend note"><span class="above" style="background:#fde2dc">shaded</span>above the score\'s '
        "reference level (the artifact is present)"
        + (
            '<span style="color:#0b6b2e;font-weight:700">bold green</span>the better of baseline and model '
            "(lower is better for LPIPS and every artifact score, higher for PSNR and SSIM)"
            if baseline_result is not None
            else ""
        )
        + "</p>"
    )
    data = result["data"] if isinstance(result["data"], str) else f"{len(result['data'])} files"
    title = "Artifact diagnosis" + (" — baseline vs model" if baseline_result is not None else "")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vivat diagnose: {who(result)}</title>
<style>{_CSS}</style></head><body>
<h1>{title}</h1>
<p class="meta">model: <code>{who(result)}</code>{
        f" &nbsp; baseline: <code>{who(baseline_result)}</code>" if baseline_result is not None else ""
    }</p>
<p class="meta">data: <code>{html.escape(data)}</code>, {result["n"]} images, {html.escape(result["sizing"])};
latent: {html.escape(result["latent"])}; reconstructions quantised to uint8 before scoring;
{html.escape(result["small"])}.</p>
{_skipped_note(result["skipped"])}
<p class="meta">All numbers are in <code>report.json</code>; the figures are also in <code>figures/</code>.</p>
<h2>Scores per image</h2>
{legend}
{_scores_table(runs)}
{lpips_note}
<h2>What the numbers mean</h2>
<p class="note">Every artifact score is 0 for a clean reconstruction (x̂ = x) and grows with its artifact.
Full definitions: docs/ARTIFACTS.md. Reference level: the most the score reaches from the other artifacts;
above it, the artifact is there.</p>
{_definitions_table()}
<h2>Worst images</h2>
<p class="note">{html.escape(result["worst_rule"])}
{" The baseline is shown on the same images." if baseline_result is not None else ""}
Heat maps share one scale per image (stated under each); black is 0.</p>
{"".join(blocks) or '<p class="note">No image has a non-zero artifact score, or --worst is 0.</p>'}
</body></html>
"""
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    report = {
        "report": "vivat diagnose",
        "data": result["data"],
        "settings": {
            "sizing": result["sizing"],
            "sizing_mode": result["sizing_mode"],
            "max_side": result["max_side"],
            "latent": result["latent"],
            "small": result["small"],
            "worst_rule": result["worst_rule"],
        },
        "definitions": DEFINITIONS,
        "reference_levels": REFERENCE_LEVELS,
        "model": _json_run(result),
        "baseline": None if baseline_result is None else _json_run(baseline_result),
        "worst": result["worst"],
        "figures": figures.paths,
    }
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"html": html_path, "json": json_path, "figures": [out / p for p in figures.paths]}


def summary_line(label: str, run: Mapping[str, Any]) -> str:
    """One line of a diagnosis result's means, e.g. for a terminal."""
    m = run["mean"]
    lp = "n/a" if m["lpips"] is None else f"{m['lpips']:.4f}"
    scores = ", ".join(f"{n} {format_value(n, m[n])}" for n in ARTIFACT_SCORES)
    return f"{label}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, LPIPS {lp}; {scores}"
