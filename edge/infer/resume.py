"""Which model a restarted edge serves: the one it served last, recorded in its model folder.

The IOC deploys models by a put to ``Edge:Model:Load``, but procServ or systemd
restart a killed edge with the command line it first started with, whose
``--model`` may be weeks old. So whenever a model starts serving, the edge
records it in ``<model_dir>/.edge-serving-<prefix>.json`` (one record per PV
prefix: several edges may share a folder), and a restart serves the recorded
model again (``--no-resume``: ``--model``). The record is written to a
temporary copy, synced and renamed over the old one, so a kill -9 leaves the old
record or the new one, never half of one. A record that cannot be resumed (not
JSON, a model outside the folder, missing, or failing its checks) is passed
over, with the reason said at start: the edge then serves ``--model`` as if
there were none. A folder the edge may not write to costs the record, never
the service.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from ptychoflow.edge.infer.modelcheck import ModelError, resolve_model_path
from ptychoflow.edge.messages import ModelNote
from ptychoflow.edge.settings import EdgeSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


def record_name(prefix: str) -> str:
    """The record's file name for the edge serving under ``prefix`` (a hidden file)."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "-", prefix).strip("-.")
    return f".edge-serving-{key}.json" if key else ".edge-serving.json"


class ServingRecord:
    """The record of the model this edge serves, in its model folder.

    ``started_with``: the resolved ``--model`` of this run ("" for none). It is
    kept in the record so that a restart whose command line names another
    model serves that one: an operator who edits the command line means it.
    """

    def __init__(self, model_dir: Path, prefix: str, started_with: str) -> None:
        self.path = model_dir / record_name(prefix)
        self.prefix = prefix
        self.started_with = started_with
        self._warned = False
        self._sweep()

    def _sweep(self) -> None:
        """Remove the temporary copies a kill left mid-write (this prefix's only)."""
        for stale in glob.glob(glob.escape(str(self.path)) + ".*.part"):
            try:
                os.unlink(stale)
            except OSError:
                pass

    def write(self, note: ModelNote) -> bool:
        """Record ``note`` as the model serving now; False (warned once) when it cannot."""
        folder = self.path.parent
        served = Path(note.path)
        model = served.relative_to(folder) if served.is_relative_to(folder) else served
        data = {"model": model.as_posix(), "version": note.version,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "prefix": self.prefix,
                "started_with": self.started_with}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.part")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _sync_folder(folder)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if not self._warned:
                self._warned = True
                log.warning("cannot record the model serving in %s (%s): a restart will "
                            "serve --model, not %s; make the model folder writable for the "
                            "edge's user", self.path, exc, note.name)
            return False
        return True


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (a power cut after it keeps the new record)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Start:
    """What to serve at start: ``spec`` ("" none), and ``fallback`` should it fail its checks.

    ``resumed``: the record's model file name when ``spec`` is the recorded
    model; ``why_not``: why a record was passed over ("" when there was none,
    or it is resumed, or resuming is off).
    """

    spec: str
    fallback: str
    resumed: str = ""
    why_not: str = ""


def choose(settings: EdgeSettings, model_dir: Path, record: ServingRecord) -> Start:
    """The recorded model when there is one to resume, else ``--model`` and why."""
    fallback = str(Path(settings.model).expanduser().resolve()) if settings.model else ""
    given = Start(fallback, fallback)
    if not settings.resume or not record.path.exists():
        return given
    name = record.path.name
    try:
        data = json.loads(record.path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return replace(given, why_not=f"not resuming from {name}: it is not JSON ({exc}); the "
                                      "next model deployed replaces it")
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model:
        return replace(given, why_not=f"not resuming from {name}: no model in it; the next "
                                      "model deployed replaces it")
    was = data.get("started_with")
    if isinstance(was, str) and was != record.started_with:
        return replace(given, why_not=f"not resuming {Path(model).name} from {name}: --model "
                                      f"changed since ({was or 'none'} then); the command "
                                      "line wins")
    try:
        path = resolve_model_path(model, model_dir, settings.int8)
    except ModelError as exc:
        return replace(given, why_not=f"not resuming from {name}: {exc}")
    return Start(str(path), fallback, resumed=path.name)


def load_first(start: Start, load: Callable[[str], T]) -> tuple[T, Start]:
    """``load(start.spec)``; a resumed model that fails its checks gives way to ``--model``.

    ``load`` raises :class:`ModelError` for a model that cannot serve; it is
    given "" when there is no model to start with.
    """
    if not start.resumed:
        return load(start.spec), start
    try:
        return load(start.spec), start
    except ModelError as exc:
        log.warning("not resuming %s: %s", start.resumed, exc)
        fallen = Start(start.fallback, start.fallback,
                       why_not=f"not resuming {start.resumed}: {exc}")
        return load(fallen.spec), fallen


def start_message(start: Start, note: ModelNote, settings: EdgeSettings) -> str:
    """What the edge says at start about the model it serves (``Message_RBV`` and the log)."""
    if start.resumed:
        instead = (f"--no-resume serves {Path(settings.model).name}" if settings.model
                   else "--no-resume starts without a model")
        return (f"resuming {note.name} (version {note.version}), the model served before the "
                f"restart, on {note.where}; {instead}")
    said = f"serving {note.name} (version {note.version}) on {note.where}"
    return f"{said}; {start.why_not}" if start.why_not else said
