"""What every ``vivat`` command shares: the help formatter, the common flags and their checks.

The flags that mean the same thing in several commands are declared here once, with one default
each: ``--model DIR`` (a ``save_pretrained`` folder), image folders, ``--sizing`` (``pad``),
``--max-side`` and ``--device`` (``auto``: the GPU when there is one, else the CPU).

Checks come in two kinds. A flag value that cannot work (a missing input folder, a size that is not
a multiple of 8) raises :class:`UsageError`: the command's usage and the message, exit status 2,
as for any argparse error. An output location that cannot be created or written raises
:class:`vivat.errors.OutputError` from :func:`prepare_output_dir` / :func:`prepare_output_file`,
called before any expensive work starts: one line, exit status 1.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from ..errors import InputError, OutputError
from ..evaluate import SIZING_MODES

DEFAULT_SIZING = "pad"
DEFAULT_DEVICE = "auto"


class UsageError(InputError):
    """A flag value the command cannot use; reported with the command's usage, exit status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's line breaks; show a flag's default when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def add_command(
    subparsers: argparse._SubParsersAction, name: str, *, help: str, description: str
) -> argparse.ArgumentParser:
    """A command's parser with the shared formatter."""
    return subparsers.add_parser(name, formatter_class=HelpFormatter, help=help, description=description)


def add_debug_argument(parser: argparse.ArgumentParser, default: object = False) -> None:
    """``--debug``: on the ``vivat`` parser (default False) and on each command's (default
    ``argparse.SUPPRESS``, so that ``vivat --debug CMD`` is not undone by the command's parser)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback of an error (also: environment variable VIVAT_DEBUG=1)",
    )


# -------------------------------------------------------------------------------------------
# Shared flags
# -------------------------------------------------------------------------------------------
def add_model_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str = "--model",
    *,
    required: bool = True,
    help: str = "model folder (save_pretrained format, e.g. OUT/model of a training run)",
) -> None:
    parser.add_argument(flag, required=required, metavar="DIR", help=help)


def add_image_folder_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str = "--data",
    *,
    required: bool = True,
    help: str = "folder of images (searched recursively for png/jpg/jpeg/webp)",
) -> None:
    parser.add_argument(flag, required=required, metavar="DIR", help=help)


def add_sizing_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, help: str | None = None) -> None:
    parser.add_argument(
        "--sizing",
        choices=SIZING_MODES,
        default=DEFAULT_SIZING,
        help=help
        or "make sizes multiples of 8 by reflect-padding (the reconstruction is cropped back: every pixel "
        "is kept and scored) or by center-cropping",
    )


def add_max_side_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, help: str | None = None
) -> None:
    parser.add_argument(
        "--max-side",
        type=int,
        default=None,
        metavar="PX",
        help=help or "first center-crop large images to at most PX per side",
    )


NO_DOWNLOAD_ENV = "VIVAT_NO_DOWNLOAD"


def add_no_download_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--no-download``: stay strictly offline for LPIPS weights (the same as ``VIVAT_NO_DOWNLOAD=1``)."""
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="never download LPIPS weights (default: fetch a missing ImageNet trunk once into torch.hub's "
        f"cache, hash-checked); the same as {NO_DOWNLOAD_ENV}=1",
    )


def apply_no_download(args: argparse.Namespace) -> None:
    """Make ``--no-download`` visible to vivat.metrics and to worker processes, through the environment."""
    if getattr(args, "no_download", False):
        os.environ[NO_DOWNLOAD_ENV] = "1"


def add_device_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, what: str = "where the model runs"
) -> None:
    parser.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        metavar="DEV",
        help=f"{what}: auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N",
    )


# -------------------------------------------------------------------------------------------
# Checks of flag values
# -------------------------------------------------------------------------------------------
def require_dir(flag: str, path: str | os.PathLike | None) -> None:
    """An input folder given with ``flag`` must exist (None: the flag was not given)."""
    if path is None:
        return
    p = Path(path)
    if not p.is_dir():
        what = "is not a folder" if p.exists() else "does not exist"
        raise UsageError(f"{flag} {path} {what}")


def require_files(paths: list[str]) -> None:
    """Input files given as positional arguments must exist and be files."""
    folders = [p for p in paths if Path(p).is_dir()]
    if folders:
        raise UsageError(f"{', '.join(folders)}: a folder, not an image file; give the image files")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UsageError(f"image file(s) not found: {', '.join(missing)}")


def require_at_least(flag: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be >= {minimum}, got {value}")


def require_multiple_of_8(flag: str, value: int) -> None:
    if value < 8 or value % 8:
        raise UsageError(f"{flag} must be a positive multiple of 8, got {value}")


def resolve_device(text: str, flag: str = "--device") -> str:
    """The device a ``--device`` value names: ``auto`` becomes ``cuda`` when a GPU is visible, else
    ``cpu``; a CUDA device that is not there is a :class:`UsageError`."""
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {text}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {text}: no CUDA device is available (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {text}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return text


# -------------------------------------------------------------------------------------------
# Output locations, checked before the work starts
# -------------------------------------------------------------------------------------------
def _file_in_the_way(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path`` itself) that is not a folder."""
    for p in (*reversed(path.parents), path):
        if p.exists() and not p.is_dir():
            return p
    return None


def _check_writable(folder: Path, flag: str, shown: Path) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vivat-write-check-"):
            pass
    except OSError as err:
        raise OutputError(
            f"{flag} {shown}: cannot write in {folder} ({err.strerror or err}); "
            "choose a folder you can write to or fix its permissions"
        ) from None


def prepare_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create the output folder ``path`` given with ``flag`` (parents too) and check that it can be
    written to; raises :class:`~vivat.errors.OutputError` naming the flag and the path otherwise."""
    out = Path(path)
    blocker = _file_in_the_way(out)
    if blocker == out:
        raise OutputError(f"{flag} {out} is a file, not a folder; give a folder (it is created if needed)")
    if blocker is not None:
        raise OutputError(
            f"{flag} {out}: {blocker} is a file, so no folder can be created under it; choose another path"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"{flag} {out}: cannot create the folder ({err.strerror or err}); choose a location you can write to"
        ) from None
    _check_writable(out, flag, out)
    return out


def prepare_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Check that the output file ``path`` given with ``flag`` can be written, creating its folder;
    the file itself is written later by the command. Raises :class:`~vivat.errors.OutputError`."""
    out = Path(path)
    if out.is_dir():
        raise OutputError(f"{flag} {out} is a folder; give a file name such as {out / 'metrics.json'}")
    blocker = _file_in_the_way(out.parent)
    if blocker is not None:
        raise OutputError(
            f"{flag} {out}: {blocker} is a file, so no folder can be created under it; choose another path"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"{flag} {out}: cannot create the folder {out.parent} ({err.strerror or err}); "
            "choose a location you can write to"
        ) from None
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputError(f"{flag} {out} exists and is read-only; choose another file or fix its permissions")
    _check_writable(out.parent, flag, out)
    return out


__all__ = [
    "DEFAULT_DEVICE",
    "DEFAULT_SIZING",
    "HelpFormatter",
    "UsageError",
    "add_command",
    "add_debug_argument",
    "add_device_argument",
    "add_image_folder_argument",
    "add_max_side_argument",
    "add_model_argument",
    "add_sizing_argument",
    "prepare_output_dir",
    "prepare_output_file",
    "require_at_least",
    "require_dir",
    "require_files",
    "require_multiple_of_8",
    "resolve_device",
]
