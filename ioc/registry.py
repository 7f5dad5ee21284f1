"""The run and model registry: one SQLite database (WAL) in the work root.

Every state change is committed when it happens, so after a crash or
``kill -9`` the history is complete up to the last transition; on the next
start :meth:`Registry.recover` marks runs that were still active as Failed
("interrupted"), because nothing is running them any more.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ptychoflow.ioc.statemachine import ACTIVE

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scan TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    results TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    time REAL NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    provenance TEXT NOT NULL DEFAULT '{}',
    run_id INTEGER,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    version INTEGER NOT NULL REFERENCES models(version),
    time REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
"""


class Registry:
    """Thread-safe access to the registry database (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database (a checkpoint folds the WAL back into the file)."""
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        with self._lock:
            cur = self._db.execute(sql, args)
            return int(cur.lastrowid or 0)

    def new_run(self, scan: str, params: dict[str, Any], state: str = "Idle") -> int:
        """Register a run and its first state; returns its id."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.execute(
                "INSERT INTO runs (scan, params, state, created, updated) VALUES (?,?,?,?,?)",
                (scan, json.dumps(params), state, now, now))
            run_id = int(cur.lastrowid or 0)
            self._db.execute("INSERT INTO events VALUES (?,?,?,?)", (run_id, now, state, ""))
            self._db.execute("COMMIT")
        return run_id

    def set_state(self, run_id: int, state: str, message: str = "") -> None:
        """Record a state change of a run, with its time and message."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE runs SET state=?, message=?, updated=? WHERE id=?",
                             (state, message, now, run_id))
            self._db.execute("INSERT INTO events VALUES (?,?,?,?)", (run_id, now, state, message))
            self._db.execute("COMMIT")

    def set_results(self, run_id: int, results: dict[str, Any]) -> None:
        """Store the merged stage results of a run."""
        self._write("UPDATE runs SET results=?, updated=? WHERE id=?",
                    (json.dumps(results, default=str), time.time(), run_id))

    def recover(self) -> list[int]:
        """Mark runs left active by a crash as Failed/interrupted; returns their ids."""
        marks = ",".join("?" * len(ACTIVE))
        with self._lock:
            rows = self._db.execute(f"SELECT id, state FROM runs WHERE state IN ({marks})",
                                    tuple(ACTIVE)).fetchall()
        ids = []
        for row in rows:
            self.set_state(row["id"], "Failed",
                           f"interrupted: the IOC stopped while the run was {row['state']}")
            ids.append(int(row["id"]))
        return ids

    def run(self, run_id: int) -> dict[str, Any] | None:
        """One run with its events, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                return None
            events = self._db.execute(
                "SELECT time, state, message FROM events WHERE run_id=? ORDER BY rowid",
                (run_id,)).fetchall()
        out = dict(row)
        out["params"] = json.loads(out["params"])
        out["results"] = json.loads(out["results"])
        out["events"] = [dict(e) for e in events]
        return out

    def last_run(self) -> dict[str, Any] | None:
        """The newest run, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT MAX(id) AS id FROM runs").fetchone()
        return None if row["id"] is None else self.run(int(row["id"]))

    def runs(self) -> list[dict[str, Any]]:
        """All runs, oldest first."""
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM runs ORDER BY id")]
        return [r for r in (self.run(i) for i in ids) if r is not None]

    def add_model(self, version: int, path: str, sha256: str, metrics: dict[str, Any],
                  provenance: dict[str, Any], run_id: int | None) -> None:
        """Register a model version (its file, checksum, figures and origin)."""
        self._write("INSERT INTO models VALUES (?,?,?,?,?,?,?)",
                    (version, path, sha256, json.dumps(metrics, default=str),
                     json.dumps(provenance, default=str), run_id, time.time()))

    def model(self, version: int) -> dict[str, Any] | None:
        """One registered model, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM models WHERE version=?", (version,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["metrics"] = json.loads(out["metrics"])
        out["provenance"] = json.loads(out["provenance"])
        return out

    def models(self) -> list[dict[str, Any]]:
        """All registered models, oldest first."""
        with self._lock:
            versions = [r[0] for r in self._db.execute("SELECT version FROM models ORDER BY 1")]
        return [m for m in (self.model(v) for v in versions) if m is not None]

    def latest_version(self) -> int:
        """The newest registered model version (0 if none)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(version) FROM models").fetchone()
        return int(row[0] or 0)

    def mark_deployed(self, version: int, reason: str = "") -> None:
        """Record that the edge was given ``version`` (automatically or by Model:Deploy)."""
        self._write("INSERT INTO deployments VALUES (?,?,?)", (version, time.time(), reason))

    def deployments(self) -> list[dict[str, Any]]:
        """Every deployment (version, time, reason), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT version, time, reason FROM deployments ORDER BY rowid").fetchall()
        return [dict(r) for r in rows]

    def deployed_version(self) -> int:
        """The version the edge was given last (0 if none)."""
        with self._lock:
            row = self._db.execute(
                "SELECT version FROM deployments ORDER BY rowid DESC LIMIT 1").fetchone()
        return int(row[0]) if row else 0
