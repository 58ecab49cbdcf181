"""Training checkpoints: one file per save, written atomically, read back with ``weights_only``.

Layout under a run's ``checkpoints/`` folder::

    ckpt-0000500.pt     one torch.save'd dict per save (see vivat.train for its keys)
    ckpt-0001000.pt
    latest              text: the file name of the newest checkpoint

Every file is first written to a hidden temporary name in the same folder, flushed and fsync'ed,
then renamed over the final name (``os.replace`` is atomic on POSIX and Windows), and the folder
is fsync'ed so the rename itself survives a power cut. A process killed at any moment therefore
leaves either the old set of files or the new one, never a half-written checkpoint under a final
name; a stale temporary file is removed by :func:`remove_stale_temporaries`.

Checkpoints hold only tensors and plain Python values (RNG states included, see
:func:`capture_rng_state`), so :func:`load_checkpoint` can use ``torch.load(weights_only=True)``,
which never executes code from the file.

Integrity: ``torch.save`` writes a zip archive that stores a CRC-32 of every entry (each tensor's
bytes, the pickled structure), but ``torch.load`` does not check them. :func:`checkpoint_problem`
does (``zipfile.ZipFile.testzip``), and :func:`load_checkpoint` refuses a file whose bytes changed
after it was written. :func:`resume_checkpoint` picks what a resumed run starts from: the newest
checkpoint, or, when asked, the newest intact one, saying which files it passed over.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import WeightsError

CHECKPOINT_FORMAT = "vivat-train-checkpoint"
CHECKPOINT_VERSION = 1
LATEST_NAME = "latest"
_CKPT_RE = re.compile(r"^ckpt-(\d{7,})\.pt$")


class CheckpointError(WeightsError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what is wrong.

    A :class:`vivat.errors.WeightsError` (so the command line reports it as one line); it stays a
    ``RuntimeError`` too for callers that caught it as one.
    """


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """A resume was asked for, but the folder holds no checkpoint (also a ``FileNotFoundError``)."""


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:07d}.pt"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint file in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``directory`` (None if there is none).

    The ``latest`` pointer names it; a newer complete file wins over the pointer (the process was
    stopped between the checkpoint's rename and the pointer's), and a pointer to a missing file
    is an error (:class:`CheckpointError`) rather than a silent fall-back to an older run state.
    """
    directory = Path(directory)
    files = list_checkpoints(directory)
    pointer = directory / LATEST_NAME
    named: Path | None = None
    if pointer.is_file():
        name = pointer.read_text().strip()
        named = directory / name
        if not _CKPT_RE.match(name) or not named.is_file():
            what = "which does not exist" if _CKPT_RE.match(name) else "which is not a checkpoint file name"
            older = f"; the newest checkpoint present is {files[-1][1].name}" if files else ""
            raise CheckpointError(f"{pointer} names {name!r}, {what} in {directory}{older}")
    if not files:
        return named
    newest = files[-1][1]
    if named is None:
        return newest
    return newest if files[-1][0] > int(_CKPT_RE.match(named.name).group(1)) else named


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike, step: int, keep: int = 3) -> Path:
    """Write ``state`` as ``directory/ckpt-{step:07d}.pt``, point ``latest`` at it, keep the last ``keep``.

    ``keep <= 0`` keeps every checkpoint. Returns the checkpoint's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(step)
    _atomic_write(path, lambda f: torch.save(state, f))
    _atomic_write(directory / LATEST_NAME, lambda f: f.write((path.name + "\n").encode()))
    if keep > 0:
        for _, old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporary files left by a process killed while writing; returns how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    n = 0
    for p in directory.glob(".*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n


REQUIRED_KEYS = ("format", "version", "step", "model", "ema", "discriminator", "opt_vae", "opt_disc", "scaler", "rng")


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with ``path`` as a ``torch.save`` archive, or None when every entry is intact.

    Reads the whole file once and checks the CRC-32 that the archive stores for each entry (every
    tensor's bytes and the pickled structure), which ``torch.load`` itself does not. The answer is
    a phrase that completes "checkpoint PATH ...".
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if size == 0:
        return "is empty (0 bytes): corrupt or truncated, e.g. written by a process that was killed"
    if magic != b"PK\x03\x04":
        return "is not a checkpoint: it does not start like the zip archive that torch.save writes"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        return f"is corrupt or truncated: its zip archive is cut short or damaged ({err})"
    if bad is not None:
        return (
            f"is corrupt: its entry {bad!r} fails the archive's CRC-32 check "
            "(the bytes changed after the checkpoint was written: a disk or copy error)"
        )
    return None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; any problem raises :class:`CheckpointError` naming the file.

    The archive's CRC-32s are verified first (:func:`checkpoint_problem`), so flipped bits inside a
    tensor are caught rather than loaded as weights.
    """
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} {problem}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text suggests weights_only=False: never for a checkpoint
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain values, so it was not written by "
            "vivat and is not loaded (loading it could run code from the file)"
        ) from err
    except Exception as err:  # an archive that is intact as a zip but not as a torch.save file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read ({type(err).__name__}: {reason})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a vivat training checkpoint (no format marker {CHECKPOINT_FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['version']}, this vivat reads version {CHECKPOINT_VERSION}"
        )
    return state


def resume_checkpoint(
    directory: str | os.PathLike, *, intact: bool = False, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any], list[str]]:
    """Load the checkpoint a resumed run starts from: ``(path, state, notes)``.

    That is the newest checkpoint (:func:`latest_checkpoint`). If it is damaged, or ``latest``
    names a missing file, :class:`CheckpointError` names the file, says what is wrong and names
    the previous intact checkpoint, if there is one. With ``intact=True`` the newest checkpoint
    that loads is used instead, and ``notes`` says, one line each, what was passed over and why
    (empty when the newest one was fine). No checkpoint at all raises :class:`NoCheckpointError`.
    """
    directory = Path(directory)
    files = [p for _, p in reversed(list_checkpoints(directory))]  # newest first
    notes: list[str] = []
    try:
        newest = latest_checkpoint(directory)
    except CheckpointError as err:
        if not intact:
            fix = f"or write its name into {directory / LATEST_NAME}"
            raise CheckpointError(f"{err}{_offer(files, directory, fix)}") from err
        notes.append(f"{err}; passed over")
        newest = files[0] if files else None
    if newest is None:
        raise NoCheckpointError(f"nothing to resume: no checkpoint in {directory} (start without --resume)")
    candidates = [newest] + [p for p in files if _step_of(p) < _step_of(newest)]
    for i, path in enumerate(candidates):
        try:
            return path, load_checkpoint(path, map_location=map_location), notes
        except CheckpointError as err:
            if not intact:
                offer = _offer(candidates[i + 1 :], directory, "or delete the damaged file")
                raise CheckpointError(f"{err}{offer}") from err
            notes.append(f"{err}; passed over")
    raise CheckpointError(f"no intact checkpoint in {directory}: " + "; ".join(notes))


def _step_of(path: Path) -> int:
    return int(_CKPT_RE.match(path.name).group(1))


def _offer(older: list[Path], directory: Path, fix: str) -> str:
    """The end of an error message: the newest intact checkpoint among ``older`` (newest first)."""
    for path in older:
        if checkpoint_problem(path) is None:
            return f". The previous checkpoint {path} is intact: continue from it with --resume-intact ({fix})"
    return f". No older intact checkpoint is in {directory}: start the run again with --overwrite"


# -------------------------------------------------------------------------------------------
# RNG states as tensors and plain values (so weights_only loading accepts them)
# -------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), NumPy and Python RNG states of this process."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when as many devices are visible)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
