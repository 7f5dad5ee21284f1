"""Atomic file writing: nothing half-written is ever visible under a final name.

Every output of a remote stage (staged scan copies, reconstructions, training
pairs, checkpoints, models) goes through :func:`atomic_path`: the writer gets a
temporary ``NAME.part`` next to the target, and only a writer that finishes
gets it renamed; an exception (or an abort) removes the temporary file, so a
failed run leaves the previous good file untouched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on error delete it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.part")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    return Path(path)
