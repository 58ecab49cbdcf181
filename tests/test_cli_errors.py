"""The command line's one error path: expected failures are one line on stderr and exit status 1,
unusable flags exit 2 with the command's usage, ``--debug`` / ``VIVAT_DEBUG=1`` show the traceback,
and output locations are checked before any work starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vivat.cli.eval as eval_command
from vivat.cli import build_parser, error_message, main
from vivat.cli.common import UsageError, prepare_output_dir, prepare_output_file, resolve_device
from vivat.config import VAEConfig
from vivat.errors import OutputError
from vivat.model import AutoencoderKL

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vivat", *argv],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    AutoencoderKL(VAEConfig.from_preset("vivat-tiny")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "a.png")
    return root


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a regular file\n")
    return path


def commands(model_dir: Path, images: Path, out: str) -> dict[str, list[str]]:
    """Every command, with valid inputs and ``out`` as its output location."""
    return {
        "train": ["train", "--preset", "vivat-tiny", "--data", str(images), "--out", out, "--steps", "1"],
        "eval": ["eval", "--model", str(model_dir), "--data", str(images), "--out", str(Path(out) / "m.json")],
        "reconstruct": ["reconstruct", "--model", str(model_dir), str(images / "a.png"), "--out", out],
        "demo": ["demo", "--quick", "--out", out],
        "convert": ["convert", "--from", str(model_dir), "--to", out],
        "diagnose": ["diagnose", "--model", str(model_dir), "--data", str(images), "--out", out],
        "ablate": ["ablate", "--data", str(images), "--val", str(images), "--out", out, "--steps", "1"],
    }


COMMAND_NAMES = ["train", "eval", "reconstruct", "demo", "convert", "diagnose", "ablate"]


# ----------------------------------------------------------------------------- unwritable outputs
@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_output_under_a_regular_file_is_one_line_before_any_work(
    command, capsys, monkeypatch, model_dir, images, a_file
):
    out = a_file / "sub"
    argv = commands(model_dir, images, str(out))[command]
    # nothing expensive may start: loading or training a model fails the test
    for target in ("vivat.cli.train.train", "vivat.cli.demo.run_demo", "vivat.cli.ablate.run_ablation"):
        monkeypatch.setattr(target, _must_not_run)
    for target in ("vivat.cli.eval", "vivat.cli.reconstruct", "vivat.cli.diagnose"):
        monkeypatch.setattr(f"{target}.load_model", _must_not_run)
    monkeypatch.setattr("vivat.cli.convert.load", _must_not_run)
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vivat: error: "), err
    assert str(a_file) in lines[0] and "is a file" in lines[0]
    assert ("--to" if command == "convert" else "--out") in lines[0]
    assert "Traceback" not in err


def _must_not_run(*args, **kwargs):
    raise AssertionError("expensive work started before the output location was checked")


@pytest.mark.parametrize("command", ["train", "reconstruct", "demo", "convert", "diagnose", "ablate"])
def test_output_folder_that_is_a_file(command, capsys, model_dir, images, a_file):
    code, _, err = run_cli(capsys, *commands(model_dir, images, str(a_file))[command])
    assert code == 1 and err.count("\n") == 1
    assert f"{a_file} is a file, not a folder" in err


def test_eval_out_that_is_a_folder(capsys, model_dir, images, tmp_path):
    code, _, err = run_cli(capsys, "eval", "--model", str(model_dir), "--data", str(images), "--out", str(tmp_path))
    assert code == 1 and err.count("\n") == 1
    assert f"--out {tmp_path} is a folder" in err and "metrics.json" in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="permissions do not bind root")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="--out .*locked"):
            prepare_output_dir(locked, "--out")
        with pytest.raises(OutputError, match="--out .*locked"):
            prepare_output_dir(locked / "new", "--out")
        with pytest.raises(OutputError, match="--out .*m.json"):
            prepare_output_file(locked / "m.json", "--out")
    finally:
        locked.chmod(0o700)


def test_prepare_output_creates_and_checks(tmp_path, a_file):
    made = prepare_output_dir(tmp_path / "a" / "b", "--out")
    assert made.is_dir() and list(made.iterdir()) == []  # the write check leaves nothing behind
    target = prepare_output_file(tmp_path / "c" / "m.json", "--out")
    assert target.parent.is_dir() and not target.exists()
    for call, path in (
        (prepare_output_dir, a_file / "x" / "y"),
        (prepare_output_file, a_file / "x" / "m.json"),
    ):
        with pytest.raises(OutputError) as info:
            call(path, "--flag")
        assert isinstance(info.value, OSError)  # OutputError is also an OSError
        assert str(info.value).startswith(f"--flag {path}: {a_file} is a file")


# ----------------------------------------------------------------------------- --debug
def test_debug_shows_the_traceback(capsys, model_dir, images, a_file):
    argv = ["eval", "--model", str(model_dir), "--data", str(images), "--out", str(a_file / "m.json")]
    with pytest.raises(OutputError):
        main([*argv, "--debug"])
    with pytest.raises(OutputError):
        main(["--debug", *argv])
    proc = run_subprocess(*argv)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and str(a_file) in proc.stderr
    proc = run_subprocess(*argv, env={"VIVAT_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "OutputError" in proc.stderr


def test_a_bug_keeps_its_traceback(capsys, monkeypatch, model_dir, images):
    def broken(*args, **kwargs):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(eval_command, "load_model", broken)
    with pytest.raises(RuntimeError, match="an internal bug"):
        main(["eval", "--model", str(model_dir), "--data", str(images)])


# ----------------------------------------------------------------------------- usage errors: exit 2
@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--model", "m", "--data", "d", "--nonsense"], "unrecognized arguments: --nonsense"),
        (["eval", "--sizing", "stretch", "--model", "m", "--data", "d"], "invalid choice: 'stretch'"),
        (["reconstruct", "--model", "m"], "the following arguments are required"),
        (["train", "--preset", "vivat-tiny", "--data", "{images}", "--out", "o", "--size", "30"], "--size"),
        (["eval", "--model", "{model}", "--data", "{images}", "--device", "no-such-device"], "--device no-such-device"),
        (["eval", "--model", "{model}", "--data", "{images}", "--max-side", "4"], "--max-side must be >= 8"),
        (["diagnose", "--model", "{model}", "--data", "{file}", "--out", "o"], "is not a folder"),
        (["reconstruct", "--model", "{model}", "{images}", "--out", "o"], "a folder, not an image file"),
        (["eval", "--model", "{file}", "--data", "{images}"], "--model {file} is not a folder"),
        (["convert", "--from", "{model}", "--to", "o", "--config", "no-such-preset"], "--config no-such-preset"),
        (["ablate", "--data", "{images}", "--val", "{images}", "--out", "o", "--only", "x"], "--only: unknown variant"),
    ],
)
def test_usage_errors_exit_2_with_the_command_usage(argv, message, capsys, model_dir, images, a_file):
    argv = [a.format(model=model_dir, images=images, file=a_file) for a in argv]
    message = message.format(file=a_file)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("usage: vivat") and message in err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(capsys, model_dir, images):
    code, _, err = run_cli(capsys, "eval", "--model", str(model_dir), "--data", str(images), "--device", "cuda")
    assert code == 2 and "no CUDA device" in err
    assert resolve_device("auto") == "cpu"
    with pytest.raises(UsageError, match="--device cuda:1"):
        resolve_device("cuda:1")


MINIMAL_ARGV = {
    "train": ["train", "--data", "d", "--out", "o"],
    "eval": ["eval", "--model", "m", "--data", "d"],
    "reconstruct": ["reconstruct", "x.png", "--model", "m", "--out", "o"],
    "demo": ["demo"],
    "convert": ["convert", "--from", "f", "--to", "t"],
    "diagnose": ["diagnose", "--model", "m", "--data", "d", "--out", "o"],
    "ablate": ["ablate", "--data", "d", "--val", "v", "--out", "o"],
}


def test_every_command_has_the_shared_defaults():
    parser = build_parser()
    assert set(MINIMAL_ARGV) == set(COMMAND_NAMES)
    parsed = {name: parser.parse_args(argv) for name, argv in MINIMAL_ARGV.items()}
    assert {name for name, a in parsed.items() if hasattr(a, "device")} == set(COMMAND_NAMES) - {"demo"}
    assert {a.device for a in parsed.values() if hasattr(a, "device")} == {"auto"}
    assert {name for name, a in parsed.items() if hasattr(a, "sizing")} == {"eval", "reconstruct", "diagnose"}
    assert {a.sizing for a in parsed.values() if hasattr(a, "sizing")} == {"pad"}
    assert all(a.debug is False for a in parsed.values())
    assert parser.parse_args(["--debug", *MINIMAL_ARGV["eval"]]).debug is True
    assert parser.parse_args([*MINIMAL_ARGV["eval"], "--debug"]).debug is True


# ----------------------------------------------------------------------------- bad inputs: exit 1
def test_garbage_weights_and_config_to_convert(capsys, tmp_path):
    garbage = tmp_path / "vae.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file" * 10)
    code, _, err = run_cli(capsys, "convert", "--from", str(garbage), "--to", str(tmp_path / "o"))
    assert code == 1 and err.count("\n") == 1 and str(garbage) in err and "Traceback" not in err
    bad_config = tmp_path / "config.json"
    bad_config.write_text("{ not json")
    code, _, err = run_cli(
        capsys, "convert", "--from", str(garbage), "--to", str(tmp_path / "o"), "--config", str(bad_config)
    )
    assert code == 1 and err.count("\n") == 1 and str(bad_config) in err


def test_os_errors_name_the_path_and_what_to_do():
    cases = [
        (FileNotFoundError(2, "No such file or directory", "/data/x.png"), "check the path"),
        (PermissionError(13, "Permission denied", "/data/out"), "permissions"),
        (NotADirectoryError(20, "Not a directory", "/data/file/out"), "not a folder"),
        (IsADirectoryError(21, "Is a directory", "/data/dir"), "give a file"),
        (FileExistsError(17, "File exists", "/data/run"), "choose another path"),
    ]
    for err, advice in cases:
        message = error_message(err)
        assert message is not None and message.startswith(f"{err.filename}: {err.strerror}; ") and advice in message
    assert error_message(FileExistsError("run/checkpoints holds a run; pass --resume")) == (
        "run/checkpoints holds a run; pass --resume"
    )
    assert error_message(RuntimeError("a bug")) is None
    assert error_message(ValueError("a bug")) is None


# ----------------------------------------------------------------------------- layout
def _vivat_imports() -> dict[str, set[str]]:
    """{module: the vivat modules it imports}, read from the sources of vivat/."""
    import ast

    root = REPO / "vivat"
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    deps.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vivat":
                deps.add(node.module)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_the_command_line_is_the_only_argparse_user_and_imports_have_no_cycle():
    for path in (REPO / "vivat").rglob("*.py"):
        if "cli" not in path.relative_to(REPO / "vivat").parts:
            assert "argparse" not in path.read_text(encoding="utf-8"), f"{path} uses argparse outside vivat/cli"
    graph = _vivat_imports()
    assert {"vivat.evaluate", "vivat.cli.common"} <= graph["vivat.cli.eval"]  # the graph is read, not empty
    assert not any(
        dep.startswith("vivat.cli")
        for name, deps in graph.items()
        if name != "vivat.__main__" and not name.startswith("vivat.cli")
        for dep in deps
    )
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dep in graph[name]:
            visit(dep, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())
