"""Autosave: the settings PVs (``autosave=True`` in pvnames) survive a restart.

Each accepted change rewrites one small JSON file atomically (temp file, fsync,
rename), so a ``kill -9`` at any moment leaves either the old or the new
settings, never a torn file. At start the saved values are checked against the
same rules as a client put; a value that no longer passes (e.g. limits changed)
is dropped with a warning rather than restored.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from ptychoflow.ioc.validate import check_value
from ptychoflow.pvnames import CONTROL, PVSpec

log = logging.getLogger(__name__)

SAVED: tuple[PVSpec, ...] = tuple(s for s in CONTROL if s.autosave)


class AutosaveError(RuntimeError):
    """A setting could not be written to the autosave file (it still applies)."""


class Autosave:
    """The saved settings of one IOC, kept in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}

    def restore(self) -> dict[str, Any]:
        """The saved values that are still valid, by suffix."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("autosave file %s is unreadable (%s); starting from defaults",
                        self.path, exc)
            return {}
        values: dict[str, Any] = {}
        for spec in SAVED:
            if spec.suffix not in data:
                continue
            v = data[spec.suffix]
            problem = check_value(spec, v)
            if problem:
                log.warning("autosave: not restoring %s: %s", spec.suffix, problem)
                continue
            values[spec.suffix] = v
        self._values = dict(values)
        return values

    def save(self, suffix: str, value: Any) -> None:
        """Record one accepted setting and rewrite the file atomically."""
        with self._lock:
            self._values[suffix] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".part")
            try:
                with tmp.open("w") as fh:
                    json.dump(self._values, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:  # a full disk: the last saved file stays whole
                tmp.unlink(missing_ok=True)
                raise AutosaveError(f"{suffix} = {value!r} applies now but could not be saved "
                                    f"to {self.path} ({exc.strerror or exc}); it will not "
                                    "survive a restart until the folder is writable") from exc
