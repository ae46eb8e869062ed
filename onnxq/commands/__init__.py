"""CLI subcommands: each module has ``configure(parser)`` and ``run(args) -> int``; helpers they share."""
from __future__ import annotations

import json
import sys
from typing import Any


def print_report(report: Any, as_json: bool) -> None:
    """Print a report object: its ``to_dict()`` as JSON, or its ``table()``."""
    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(report.table())
