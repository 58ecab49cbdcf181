"""Bad input to every command: an exit status of 1 or 2, one ``error:`` line naming the file, no traceback.

The matrix (corrupt, empty, truncated, tiny and 16-bit images; a file where a folder is expected
and the reverse; unwritable outputs; malformed ``config.json``; garbage weights and checkpoints)
runs ``python -m vivat ...`` with the repository on ``PYTHONPATH`` and a temporary folder as the
working directory. To keep ~50 command runs fast on a small machine, one Python process imports
torch and vivat once and then forks a child per case, which runs ``vivat/__main__.py`` exactly as
``python -m vivat`` would (same exit status, same stderr, an uncaught exception printed as a
traceback); ``test_forked_runs_match_real_subprocesses`` checks that against real subprocesses.
Where ``os.fork`` does not exist every case is a real subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vivat.config import VAEConfig
from vivat.model import AutoencoderKL

REPO = Path(__file__).resolve().parents[1]
ERROR_LINE = re.compile(r"^vivat( [\w-]+)?: error: ")

# Set for every run: no C++ build in these short runs (the torch backend computes the same), one
# thread each, and no terminal progress bars.
RUN_ENV = {"VIVAT_NO_CPP": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}


# -------------------------------------------------------------------------------------------
# inputs
# -------------------------------------------------------------------------------------------
def photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = (rng.random((3, 3, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def write_png(path: Path, h: int = 40, w: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(h, w, seed)).save(path)
    return path


def write_bad(path: Path, kind: str) -> Path:
    """A broken or unusual image file of ``kind``: corrupt, empty, truncated, tiny or 16bit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":  # a valid header (the scan accepts it); the pixel data is cut short
        write_png(path, 64, 64, seed=5)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "tiny":
        write_png(path, 4, 4, seed=6)
    elif kind == "16bit":
        ramp = (np.linspace(0, 65535, 40 * 48).reshape(40, 48)).astype(np.uint16)
        Image.fromarray(ramp).save(path)  # a uint16 array: mode I;16
    else:
        raise ValueError(kind)
    return path


BAD_CONFIGS = {
    "not_json": "{ this is not json",
    "json_list": "[1, 2, 3]",
    "string_for_int": {"ch": "32"},
    "unknown_key": {"chanels": 32},
    "negative": {"z_channels": -4},
    "bad_loss": {"loss": {"kl_weight": "high"}},
}


def write_model(folder: Path, source: Path, config_fault: str | None = None, weights_fault: str | None = None) -> Path:
    """A copy of the model in ``source`` with one fault in ``config.json`` or ``model.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    if config_fault is None:
        (folder / "config.json").write_text(json.dumps(config))
    else:
        bad = BAD_CONFIGS[config_fault]
        (folder / "config.json").write_text(bad if isinstance(bad, str) else json.dumps({**config, **bad}))
    weights = (source / "model.safetensors").read_bytes()
    if weights_fault == "garbage":
        weights = np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    elif weights_fault == "truncated":
        weights = weights[: len(weights) // 3]
    elif weights_fault == "missing":
        return folder
    (folder / "model.safetensors").write_bytes(weights)
    return folder


# -------------------------------------------------------------------------------------------
# the matrix
# -------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    argv: list[str]
    names: str | None  # text the error line (or, with ``ok``, stderr) must contain
    ok: bool = False  # the command must succeed (exit 0) instead
    once: str | None = None  # with ok: this text appears exactly once on stderr
    either: bool = False  # success, or a failure with one error line containing ``names``
    marks: list = field(default_factory=list)


def build_cases(root: Path, model: Path) -> list[Case]:
    """Create every case's inputs under ``root``; the runs happen with ``root`` as working directory."""
    good = root / "good"
    write_png(good / "a.png", seed=1)
    write_png(good / "b.png", 48, 40, seed=2)
    a_file = root / "plain.txt"
    a_file.write_text("a regular file\n")
    under_file = a_file / "sub"  # a path below a regular file: cannot be created by anyone
    cases: list[Case] = []
    M = str(model)

    def only_bad(kind: str) -> Path:
        return write_bad(root / f"only_{kind}" / f"{kind}.png", kind)

    def mixed(kind: str) -> Path:
        folder = root / f"mixed_{kind}"
        write_png(folder / "a.png", seed=1)
        write_png(folder / "b.png", 48, 40, seed=2)
        write_bad(folder / f"{kind}.png", kind)
        return folder

    # ---- eval -------------------------------------------------------------------------------
    for kind in ("corrupt", "empty", "truncated", "tiny"):
        bad = only_bad(kind)
        # a tiny image is padded (as in training) or skipped: either way no traceback, and if the
        # command fails for want of images, the error names it
        cases.append(
            Case(
                f"eval-only-{kind}",
                ["eval", "--model", M, "--data", str(bad.parent), "--no-lpips"],
                bad.name,
                either=kind == "tiny",
            )
        )
        folder = mixed(kind)
        cases.append(
            Case(
                f"eval-mixed-{kind}",
                ["eval", "--model", M, "--data", str(folder), "--no-lpips"],
                # a tiny image among good ones is padded by the training rule (the report states it)
                None if kind == "tiny" else f"{kind}.png",
                ok=True,
                once=None if kind == "tiny" else f"{kind}.png",
            )
        )
    folder16 = mixed("16bit")
    cases.append(Case("eval-16bit", ["eval", "--model", M, "--data", str(folder16), "--no-lpips"], None, ok=True))
    cases += [
        Case("eval-data-is-a-file", ["eval", "--model", M, "--data", str(good / "a.png")], "a.png"),
        Case("eval-model-is-a-file", ["eval", "--model", str(a_file), "--data", str(good)], "plain.txt"),
        Case("eval-data-missing", ["eval", "--model", M, "--data", str(root / "nowhere")], "nowhere"),
        Case("eval-out-is-a-folder", ["eval", "--model", M, "--data", str(good), "--out", str(good)], "good"),
        Case(
            "eval-out-under-a-file",
            ["eval", "--model", M, "--data", str(good), "--no-lpips", "--out", str(under_file / "m.json")],
            "plain.txt",
        ),
    ]
    for fault in BAD_CONFIGS:
        folder = write_model(root / f"model_cfg_{fault}", model, config_fault=fault)
        cases.append(Case(f"eval-config-{fault}", ["eval", "--model", str(folder), "--data", str(good)], "config.json"))
    for fault in ("garbage", "truncated", "missing"):
        folder = write_model(root / f"model_w_{fault}", model, weights_fault=fault)
        cases.append(
            Case(f"eval-weights-{fault}", ["eval", "--model", str(folder), "--data", str(good)], "model.safetensors")
        )

    # ---- reconstruct --------------------------------------------------------------------------
    for kind in ("corrupt", "empty", "truncated"):
        bad = write_bad(root / "recon_in" / f"{kind}.png", kind)
        cases.append(Case(f"reconstruct-{kind}", ["reconstruct", str(bad), "--model", M, "--out", "recon"], bad.name))
    for kind in ("tiny", "16bit"):
        img = write_bad(root / "recon_in" / f"{kind}.png", kind)
        cases.append(
            Case(
                f"reconstruct-{kind}",
                ["reconstruct", str(img), "--model", M, "--out", f"recon_{kind}"],
                img.name if kind == "tiny" else None,
                ok=kind == "16bit",
                either=kind == "tiny",
            )
        )
    cases += [
        Case("reconstruct-image-is-a-folder", ["reconstruct", str(good), "--model", M, "--out", "r"], "good"),
        Case(
            "reconstruct-out-under-a-file",
            ["reconstruct", str(good / "a.png"), "--model", M, "--out", str(under_file)],
            "plain.txt",
        ),
        Case(
            "reconstruct-garbage-weights",
            ["reconstruct", str(good / "a.png"), "--model", str(root / "model_w_garbage"), "--out", "r"],
            "model.safetensors",
        ),
    ]

    # ---- train --------------------------------------------------------------------------------
    quick = [
        "--steps",
        "1",
        "--size",
        "16",
        "--batch-size",
        "1",
        "--val-images",
        "1",
        "--val-every",
        "0",
        "--no-progress",
    ]
    train_mixed = root / "train_mixed"
    write_png(train_mixed / "a.png", seed=1)
    write_png(train_mixed / "b.png", 48, 40, seed=2)
    for kind in ("truncated", "tiny", "16bit", "corrupt", "empty"):
        write_bad(train_mixed / f"{kind}.png", kind)
    ckpt_run = root / "damaged_run" / "checkpoints"
    ckpt_run.mkdir(parents=True)
    (ckpt_run / "ckpt-0000001.pt").write_bytes(b"PK\x03\x04" + bytes(200))
    (ckpt_run / "latest").write_text("ckpt-0000001.pt\n")
    pointer_run = root / "pointer_run" / "checkpoints"
    pointer_run.mkdir(parents=True)
    (pointer_run / "latest").write_text("ckpt-0000009.pt\n")
    cases += [
        Case(
            "train-only-corrupt",
            ["train", "--preset", "vivat-tiny", "--data", str(root / "only_corrupt"), "--out", "t1", *quick],
            "only_corrupt",
        ),
        Case(
            "train-data-is-a-file",
            ["train", "--preset", "vivat-tiny", "--data", str(a_file), "--out", "t2"],
            "plain.txt",
        ),
        Case(
            "train-out-under-a-file",
            ["train", "--preset", "vivat-tiny", "--data", str(good), "--out", str(under_file), *quick],
            "plain.txt",
        ),
        Case(
            "train-init-bad-config",
            ["train", "--init", str(root / "model_cfg_string_for_int"), "--data", str(good), "--out", "t3", *quick],
            "config.json",
        ),
        Case(
            "train-init-garbage-weights",
            ["train", "--init", str(root / "model_w_garbage"), "--data", str(good), "--out", "t4", *quick],
            "model.safetensors",
        ),
        Case(
            "train-resume-damaged",
            ["train", "--resume", "--data", str(good), "--out", "damaged_run", *quick],
            "ckpt-0000001.pt",
        ),
        Case(
            "train-resume-pointer",
            ["train", "--resume", "--data", str(good), "--out", "pointer_run", *quick],
            "ckpt-0000009.pt",
        ),
        Case(
            "train-existing-run",
            ["train", "--preset", "vivat-tiny", "--data", str(good), "--out", "damaged_run", *quick],
            "damaged_run",
        ),
        Case(
            "train-resume-nothing",
            ["train", "--resume", "--data", str(good), "--out", "fresh_run", *quick],
            "fresh_run",
        ),
        # bad images among good ones: training skips the unreadable ones at the scan, replaces the one
        # that fails to decode (named once), pads the tiny one and reads the 16-bit one
        Case(
            "train-mixed-images",
            [
                "train",
                "--preset",
                "vivat-tiny",
                "--data",
                str(train_mixed),
                "--out",
                "t5",
                *quick,
                "--batch-size",
                "4",
                "--val-images",
                "5",  # the validation crops read every usable image, the truncated one included
            ],
            "truncated.png",
            ok=True,
            once="could not decode",
        ),
    ]

    # ---- demo ---------------------------------------------------------------------------------
    cases += [
        Case("demo-out-under-a-file", ["demo", "--quick", "--steps", "1", "--out", str(under_file)], "plain.txt"),
        Case("demo-out-is-a-file", ["demo", "--quick", "--steps", "1", "--out", str(a_file)], "plain.txt"),
    ]

    # ---- convert ------------------------------------------------------------------------------
    garbage_st = root / "garbage.safetensors"
    garbage_st.write_bytes(np.random.default_rng(3).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    garbage_ckpt = root / "garbage.ckpt"
    garbage_ckpt.write_bytes(np.random.default_rng(4).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    bad_cfg = root / "bad_config.json"
    bad_cfg.write_text('{"ch": "32"}')
    cases += [
        Case(
            "convert-garbage-safetensors", ["convert", "--from", str(garbage_st), "--to", "c1"], "garbage.safetensors"
        ),
        Case("convert-garbage-ckpt", ["convert", "--from", str(garbage_ckpt), "--to", "c2"], "garbage.ckpt"),
        Case("convert-missing-source", ["convert", "--from", str(root / "absent.ckpt"), "--to", "c3"], "absent.ckpt"),
        Case(
            "convert-bad-config-arg",
            ["convert", "--from", M, "--to", "c4", "--config", str(bad_cfg)],
            "bad_config.json",
        ),
        Case(
            "convert-model-bad-config",
            ["convert", "--from", str(root / "model_cfg_json_list"), "--to", "c5"],
            "config.json",
        ),
        Case("convert-to-under-a-file", ["convert", "--from", M, "--to", str(under_file)], "plain.txt"),
    ]

    # ---- diagnose -----------------------------------------------------------------------------
    diag = ["--no-lpips", "--worst", "0"]
    cases += [
        Case(
            "diagnose-out-is-a-file",
            ["diagnose", "--model", M, "--data", str(good), "--out", str(a_file), *diag],
            "plain.txt",
        ),
        Case(
            "diagnose-out-under-a-file",
            ["diagnose", "--model", M, "--data", str(good), "--out", str(under_file), *diag],
            "plain.txt",
        ),
        Case(
            "diagnose-garbage-weights",
            ["diagnose", "--model", str(root / "model_w_garbage"), "--data", str(good), "--out", "d1", *diag],
            "model.safetensors",
        ),
        Case(
            "diagnose-bad-config",
            ["diagnose", "--model", str(root / "model_cfg_not_json"), "--data", str(good), "--out", "d2", *diag],
            "config.json",
        ),
        Case(
            "diagnose-only-corrupt",
            ["diagnose", "--model", M, "--data", str(root / "only_corrupt"), "--out", "d3", *diag],
            "corrupt.png",
        ),
        Case(
            "diagnose-baseline-is-a-file",
            ["diagnose", "--model", M, "--baseline", str(a_file), "--data", str(good), "--out", "d4", *diag],
            "plain.txt",
        ),
    ]

    # ---- ablate -------------------------------------------------------------------------------
    abl = ["--steps", "1", "--size", "16", "--batch-size", "1", "--only", "baseline", "--no-noise-run", "--no-lpips"]
    cases += [
        Case(
            "ablate-data-is-a-file",
            ["ablate", "--data", str(a_file), "--val", str(good), "--out", "a1", *abl],
            "plain.txt",
        ),
        Case(
            "ablate-val-missing",
            ["ablate", "--data", str(good), "--val", str(root / "nowhere"), "--out", "a2", *abl],
            "nowhere",
        ),
        Case(
            "ablate-out-under-a-file",
            ["ablate", "--data", str(good), "--val", str(good), "--out", str(under_file), *abl],
            "plain.txt",
        ),
    ]
    return cases


# -------------------------------------------------------------------------------------------
# running: one process imports vivat once and forks a child per case
# -------------------------------------------------------------------------------------------
RUNNER = textwrap.dedent(
    """
    import json, os, runpy, sys, traceback
    cases = json.load(open(sys.argv[1]))
    import torch  # imported once; each forked child then starts where `python -m vivat` would run main()
    import vivat.cli  # noqa: F401
    codes = {}
    for case in cases:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                out = os.open(case["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                err = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                sys.stdout.flush(); sys.stderr.flush()
                os.dup2(out, 1); os.dup2(err, 2)
                os.chdir(case["cwd"])
                sys.argv = ["vivat", *case["argv"]]
                try:
                    runpy.run_module("vivat", run_name="__main__", alter_sys=True)
                    code = 0
                except SystemExit as exc:
                    if exc.code is None or isinstance(exc.code, int):
                        code = exc.code or 0
                    else:
                        print(exc.code, file=sys.stderr)
                except BaseException:
                    traceback.print_exc()
                    code = 1
            finally:
                try:
                    sys.stdout.flush(); sys.stderr.flush()
                finally:
                    os._exit(code)
        _, status = os.waitpid(pid, 0)
        codes[case["id"]] = os.waitstatus_to_exitcode(status)
    json.dump(codes, open(sys.argv[2], "w"))
    """
)


def run_env() -> dict[str, str]:
    env = {**os.environ, **RUN_ENV}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("VIVAT_DEBUG", None)
    return env


def run_subprocess(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "vivat", *argv],
        cwd=cwd,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    AutoencoderKL(VAEConfig.from_preset("vivat-tiny")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, model_dir) -> tuple[dict[str, Case], dict[str, Result], Path]:
    root = tmp_path_factory.mktemp("errors")
    cases = {c.id: c for c in build_cases(root, model_dir)}
    logs = tmp_path_factory.mktemp("logs")
    results: dict[str, Result] = {}
    if hasattr(os, "fork"):
        spec = [
            {
                "id": c.id,
                "argv": c.argv,
                "cwd": str(root),
                "stdout": str(logs / f"{c.id}.out"),
                "stderr": str(logs / f"{c.id}.err"),
            }
            for c in cases.values()
        ]
        (logs / "cases.json").write_text(json.dumps(spec))
        subprocess.run(
            [sys.executable, "-c", RUNNER, str(logs / "cases.json"), str(logs / "codes.json")],
            env=run_env(),
            cwd=root,
            check=True,
            timeout=600,
        )
        codes = json.loads((logs / "codes.json").read_text())
        for c in cases.values():
            results[c.id] = Result(
                codes[c.id],
                (logs / f"{c.id}.out").read_text(errors="replace"),
                (logs / f"{c.id}.err").read_text(errors="replace"),
            )
    else:
        for c in cases.values():
            results[c.id] = Result(*run_subprocess(c.argv, root))
    return cases, results, root


def _case_params() -> list:
    """pytest params with each case's marks; the inputs are built into a scratch folder to list them."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        model.mkdir()
        (model / "config.json").write_text(json.dumps(VAEConfig.from_preset("vivat-tiny").to_dict()))
        (model / "model.safetensors").write_bytes(b"")
        return [pytest.param(c.id, marks=c.marks, id=c.id) for c in build_cases(Path(tmp) / "c", model)]


def describe(case: Case, r: Result) -> str:
    return f"{case.id}: exit {r.code}\n$ vivat {' '.join(case.argv)}\n--- stderr ---\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("case_id", _case_params())
def test_bad_input(matrix, case_id):
    cases, results, _ = matrix
    case, r = cases[case_id], results[case_id]
    assert "Traceback" not in r.stderr, describe(case, r)
    errors = [line for line in r.stderr.splitlines() if ERROR_LINE.match(line)]
    if case.either and r.code == 0:
        assert not errors, describe(case, r)
        return
    if case.ok:
        assert r.code == 0, describe(case, r)
        assert not errors, describe(case, r)
        if case.names is not None:
            assert case.names in r.stderr, describe(case, r)
        if case.once is not None:
            assert r.stderr.count(case.once) == 1, describe(case, r)
        return
    assert r.code in (1, 2), describe(case, r)
    assert len(errors) == 1, describe(case, r)
    assert case.names in errors[0], describe(case, r)


# -------------------------------------------------------------------------------------------
# specific messages
# -------------------------------------------------------------------------------------------
def _result(matrix, case_id: str) -> Result:
    return matrix[1][case_id]


def test_config_errors_name_the_field(matrix):
    for fault, field_name in (
        ("string_for_int", "ch"),
        ("unknown_key", "chanels"),
        ("negative", "z_channels"),
        ("bad_loss", "kl_weight"),
    ):
        err = _result(matrix, f"eval-config-{fault}").stderr
        assert field_name in err and "config.json" in err, err
    assert "not valid JSON" in _result(matrix, "eval-config-not_json").stderr
    assert "a list" in _result(matrix, "eval-config-json_list").stderr


def test_garbage_checkpoint_error_does_not_suggest_unsafe_loading(matrix):
    for case_id in ("convert-garbage-ckpt", "train-resume-damaged"):
        err = _result(matrix, case_id).stderr
        assert "weights_only=False" not in err and "trust" not in err, err


def test_training_names_an_undecodable_image_once_and_counts_it(matrix):
    r = _result(matrix, "train-mixed-images")
    root = matrix[2]
    assert r.stderr.count("truncated.png") == 1, r.stderr  # warned once, though the validation crops read it too
    records = [json.loads(line) for line in (root / "t5" / "log.jsonl").read_text().splitlines()]
    end = [rec for rec in records if rec["kind"] == "end"]
    assert len(end) == 1 and [Path(p).name for p in end[0]["images_failed_at_load"]] == ["truncated.png"]
    start = next(rec for rec in records if rec["kind"] == "start")
    assert start["data"]["skipped_unreadable"] == 2 and start["data"]["padded"] == 1  # corrupt + empty; tiny
    assert "could not be decoded" in r.stdout


def test_forked_runs_match_real_subprocesses(matrix):
    """The forked children behave as ``python -m vivat`` does (exit status and error line)."""
    cases, results, root = matrix
    for case_id in ("eval-config-string_for_int", "eval-data-is-a-file", "convert-garbage-ckpt"):
        code, _, err = run_subprocess(cases[case_id].argv, root)
        errors = [line for line in err.splitlines() if ERROR_LINE.match(line)]
        forked = [line for line in results[case_id].stderr.splitlines() if ERROR_LINE.match(line)]
        assert code == results[case_id].code and errors == forked, (case_id, err, results[case_id].stderr)


# -------------------------------------------------------------------------------------------
# the C++ build: a missing compiler is named; no CUDA notice on a CPU machine
# -------------------------------------------------------------------------------------------
def test_missing_compiler_is_named_and_cuda_notice_is_not_printed(tmp_path):
    code = textwrap.dedent(
        """
        import warnings
        from vivat_kernels import _build
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert _build.load_extension() is None
        print("WARN", *[str(w.message) for w in caught])
        print("ERROR", _build.build_error())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "CXX": str(tmp_path / "no-such-g++"), "VIVAT_CACHE": str(tmp_path)}
    env.pop("VIVAT_NO_CPP", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "no-such-g++" in proc.stdout and "no C++ compiler" in proc.stdout, proc.stdout
    assert "ninja: build stopped" not in proc.stdout
    assert "No CUDA runtime" not in proc.stderr + proc.stdout, proc.stderr
    assert not list(tmp_path.glob("vivat_kernels_cpp_*/*.o"))  # nothing was compiled


def test_build_command_reports_a_missing_compiler(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CXX": str(tmp_path / "no-such-g++"), "VIVAT_CACHE": str(tmp_path)}
    env.pop("VIVAT_NO_CPP", None)
    proc = subprocess.run(
        [sys.executable, "-m", "vivat_kernels", "build"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    expected = (
        f"build failed: no C++ compiler: {str(tmp_path / 'no-such-g++')!r} is not on PATH "
        "(install g++ or clang++, e.g. apt install g++, or point $CXX at one)"
    )
    assert lines == [expected], proc.stderr
