"""The ``vivat`` command line: one module per command, each an ``add_parser`` plus a ``run``.

    vivat demo                                   # train a tiny VAE on bundled photos, evaluate, report
    vivat train --preset vivat-tiny --data photos/train --val photos/val --out runs/tiny --steps 2000
    torchrun --nproc_per_node 4 -m vivat train ...   # the same on 4 GPUs (or CPU processes)
    vivat eval --model runs/tiny/model --data photos/val --out metrics.json
    vivat reconstruct --model runs/tiny/model cat.jpg dog.png --out recon/
    vivat convert --from sd-v1-5.ckpt --to runs/sd-vivat --scn --reflect   # VIVAT-ize a pretrained VAE
    vivat diagnose --model runs/tiny/model --data photos/val --out diag/   # artifact report (HTML + JSON)
    vivat ablate --data photos/train --val photos/val --steps 600 --out runs/ablation   # each fix alone

Also available as ``python -m vivat ...``. Every command explains its flags with ``--help``.

Errors. A flag the command cannot use prints the command's usage and the problem (exit status 2).
An expected failure -- a :class:`vivat.errors.VivatError`, or a missing, unreadable or unwritable
file or folder -- prints one line ``vivat: error: <message>`` on stderr (exit status 1); ``--debug``
or ``VIVAT_DEBUG=1`` shows the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import VivatError
from . import ablate, convert, demo, diagnose, reconstruct, train
from . import eval as eval_command
from .common import HelpFormatter, UsageError, add_debug_argument, apply_no_download

COMMANDS = (demo, train, eval_command, reconstruct, convert, diagnose, ablate)
DEBUG_ENV = "VIVAT_DEBUG"

# What to do about an operating-system error on a path the user gave, by its type.
_OS_ERROR_ADVICE: tuple[tuple[type[OSError], str], ...] = (
    (FileNotFoundError, "check the path"),
    (PermissionError, "check its permissions or choose another location"),
    (NotADirectoryError, "a part of the path is a file, not a folder; choose another path"),
    (IsADirectoryError, "it is a folder; give a file"),
    (FileExistsError, "choose another path or remove it"),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``vivat`` parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="vivat",
        formatter_class=HelpFormatter,
        description=__doc__.split("\n\n", 1)[1].split("\n\nAlso", 1)[0],
        epilog="Run 'vivat COMMAND --help' for the flags of a command.",
    )
    add_debug_argument(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        command_parser = module.add_parser(subparsers)
        add_debug_argument(command_parser, default=argparse.SUPPRESS)  # vivat CMD ... --debug works too
        command_parser.set_defaults(run=module.run, command_parser=command_parser)
    return parser


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """Whether errors should show their traceback: ``--debug`` or ``VIVAT_DEBUG`` set to a true value."""
    if args is not None and getattr(args, "debug", False):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def error_message(err: BaseException) -> str | None:
    """The one line shown for an expected failure, or None for an error that is a bug."""
    if isinstance(err, VivatError):
        return str(err)
    for kind, advice in _OS_ERROR_ADVICE:
        if isinstance(err, kind):
            if err.filename is None:  # raised by vivat with its own message, which names the path
                return str(err)
            where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
            return f"{where}: {err.strerror or kind.__name__}; {advice}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vivat ARGS``; returns the exit status (argparse's usage errors raise ``SystemExit(2)``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_no_download(args)
    try:
        return args.run(args)
    except UsageError as err:
        if debug_requested(args):
            raise
        args.command_parser.error(str(err))  # usage + message, exit status 2
    except KeyboardInterrupt:
        if debug_requested(args):
            raise
        print("vivat: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = error_message(err)
        if message is None or debug_requested(args):
            raise
        print(f"vivat: error: {' '.join(message.split())}", file=sys.stderr)
        return 1


__all__ = ["COMMANDS", "DEBUG_ENV", "build_parser", "debug_requested", "error_message", "main"]
