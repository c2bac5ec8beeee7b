"""What every experiment of the lab does with its results: log a line, keep the JSON on disk."""
from __future__ import annotations

import json
from pathlib import Path

from .._atomic import atomic_write_text


def log(*args) -> None:
    """Print a progress line at once (an experiment runs for minutes)."""
    print(*args, flush=True)


def write_json(path: Path, payload: dict) -> None:
    """Write the results atomically: an interrupted experiment leaves the previous complete file."""
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
