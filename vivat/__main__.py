"""``python -m vivat ...``: the same as the ``vivat`` command."""

from .cli import main

raise SystemExit(main())
