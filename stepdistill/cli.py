"""Helpers shared by the command-line scripts in train/ and eval/."""

from __future__ import annotations

import os
import sys


def run_cli(main) -> None:
    """Run ``main()``; bad input (missing or unreadable files, invalid configs, a missing optional package) and a
    stopped run (non-finite losses) end with one clear ``error:`` line and exit status 2, not a traceback.

    Set ``STEPDISTILL_DEBUG=1`` to see the full traceback.
    """
    try:
        main()
    except (OSError, ValueError, TypeError, FloatingPointError, ImportError) as err:
        if os.environ.get("STEPDISTILL_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
