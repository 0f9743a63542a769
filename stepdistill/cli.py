"""Helpers shared by the command-line scripts in train/ and eval/."""

from __future__ import annotations

import os
import sys


def run_cli(main) -> None:
    """Run ``main()``; bad input (missing files, invalid configs) ends with one clear line, not a traceback.

    Set ``STEPDISTILL_DEBUG=1`` to see the full traceback.
    """
    try:
        main()
    except (FileNotFoundError, ValueError, TypeError) as err:
        if os.environ.get("STEPDISTILL_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
