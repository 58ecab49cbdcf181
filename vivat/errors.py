"""Expected failures, reported to a user as one line.

Library code raises :class:`VivatError` (or one of its subclasses) for failures a user can fix:
a missing, unreadable or malformed input, an unwritable output, a bad config, damaged weights or
checkpoints. The message names the file or argument and says what to do. The command line turns
these into ``vivat: error: <message>`` on stderr with exit status 1, and shows the traceback only
with ``--debug`` or ``VIVAT_DEBUG=1``. Anything else is a bug and keeps its traceback.

Each class also derives from the built-in exception a caller would already catch, so
``except ValueError`` or ``except OSError`` around library calls keeps working.
"""

from __future__ import annotations


class VivatError(Exception):
    """A failure the user can fix; ``str(err)`` is one line naming the file or argument."""


class InputError(VivatError, ValueError):
    """A missing, unreadable or malformed input file or folder, or a bad argument value."""


class OutputError(VivatError, OSError):
    """An output location that cannot be created or written."""


class ConfigError(VivatError, ValueError):
    """A ``config.json`` or config value that does not describe a valid model or run."""


class WeightsError(VivatError, ValueError):
    """Model weights or a checkpoint that are missing, damaged or do not fit the model."""
