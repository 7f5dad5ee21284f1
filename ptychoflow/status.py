"""``ptychoflow status``: the run, the models and the edge at a glance, in a terminal.

For the beamline hosts reached over SSH, where no display is at hand. It follows
the control IOC's and the edge's PVs with pvAccess monitors (the IOC serves its
records over PVA too), so a screen that refreshes a few times a second costs the
servers one update per change, not a get per PV per refresh. Every name comes
from :mod:`ptychoflow.pvnames`; a PV that does not answer shows as
"disconnected", since an IOC running with its edge down is an ordinary state.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptychoflow.config import add_arguments, resolve, setting
from ptychoflow.pvnames import CONTROL, DEFAULT_PREFIX, EDGE, PVSpec

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

HELP = "live status in the terminal: workflow, models, settings and the edge (pvAccess)"

STATE, PROGRESS, MESSAGE = (CONTROL.workflow_state, CONTROL.workflow_progress,
                            CONTROL.workflow_message)
RUN_ID, ACTIVE, QUEUED = (CONTROL.workflow_run_id, CONTROL.workflow_active_runs,
                          CONTROL.workflow_queued_scans)
AUTO, TARGET, TARGET_MET = (CONTROL.workflow_auto, CONTROL.model_quality_target,
                            CONTROL.model_target_met)
MODELS: tuple[tuple[str, PVSpec], ...] = (
    ("Newest registered", CONTROL.model_version),
    ("Deployed", CONTROL.model_deployed),
    ("Quality (SSIM)", CONTROL.model_quality),
)
SETTINGS: tuple[tuple[str, PVSpec], ...] = (
    ("Transfer", CONTROL.transfer_backend),
    ("Compute", CONTROL.compute_backend),
    ("Algorithm", CONTROL.recon_algorithm),
    ("Recon epochs", CONTROL.recon_epochs),
    ("Train epochs", CONTROL.train_epochs),
)
EDGE_ROWS: tuple[tuple[str, PVSpec], ...] = (
    ("Frame rate", EDGE.frame_rate),
    ("Latency", EDGE.latency),
    ("Processed", EDGE.processed),
    ("Missed", EDGE.missed),
    ("Dropped", EDGE.dropped),
    ("Bad frames", EDGE.bad_frames),
    ("Unplaced", EDGE.unplaced),
    ("Model version", EDGE.model_version),
)
EDGE_MESSAGE = EDGE.message

#: What the view follows on the IOC and on the edge.
CONTROL_VIEW: tuple[PVSpec, ...] = (STATE, PROGRESS, MESSAGE, RUN_ID, ACTIVE, QUEUED, AUTO,
                                     TARGET, TARGET_MET, *(s for _, s in MODELS + SETTINGS))
EDGE_VIEW: tuple[PVSpec, ...] = (*(s for _, s in EDGE_ROWS), EDGE_MESSAGE)

VERSIONS = {CONTROL.model_version.suffix, CONTROL.model_deployed.suffix,
            EDGE.model_version.suffix}
STATE_STYLE = {"Idle": "bold", "Done": "bold green", "Failed": "bold red",
               "Aborted": "bold magenta"}  # the busy states: yellow
PLAIN_WIDTH = 100  # columns of a frame written to a file or a pipe
MESSAGE_CHARS = 200  # a message up to 1024 characters long shows its start: a frame fits


@dataclass
class StatusSettings:
    """What ``ptychoflow status`` can be told, from ``[status]`` in the TOML file or flags."""

    prefix: str = setting(DEFAULT_PREFIX, "PV prefix of the control IOC")
    edge_prefix: str = setting("", "PV prefix of the edge; empty: the same as --prefix")
    once: bool = setting(False, "print one frame and exit (for scripts): exit status 1 when "
                                "neither the IOC nor the edge answers")
    wait: float = setting(2.0, "with --once: seconds to wait for the PVs to connect")
    refresh: float = setting(4.0, "frames per second in a terminal")

    def __post_init__(self) -> None:
        if not self.prefix:
            raise ValueError("prefix must not be empty")
        self.edge_prefix = self.edge_prefix or self.prefix
        if self.wait < 0:
            raise ValueError(f"wait must be >= 0 seconds, got {self.wait}")
        if not self.refresh > 0:
            raise ValueError(f"refresh must be positive (frames per second), got {self.refresh}")


def register(parser: argparse.ArgumentParser) -> None:
    """Flags for every :class:`StatusSettings` field."""
    add_arguments(parser, StatusSettings)
    parser.set_defaults(func=run)


def decode(spec: PVSpec, value: Any) -> object:
    """A PV's value as shown: an enum's state name, a long string's text, else the number."""
    v = value["value"]
    if spec.enums:
        index = int(v["index"])
        return spec.enums[index] if 0 <= index < len(spec.enums) else str(index)
    if hasattr(v, "tobytes"):  # a long string that arrived as a char array
        return bytes(v.tobytes()).split(b"\0", 1)[0].decode(errors="replace")
    return v


class Watcher:
    """Monitors on the view's PVs: the latest value of each, ``None`` while disconnected."""

    def __init__(self, pvs: Iterable[tuple[str, PVSpec]], quiet: bool = True) -> None:
        import p4p
        from p4p.client.raw import set_debug
        from p4p.client.thread import Context

        if quiet:  # "connection refused" from a name server that is down: the view says so,
            # and a line written straight to the terminal would tear the live view
            set_debug("pvxs.tcp.io", p4p.logLevelFatal)
        self._lock = threading.Lock()
        self._values: dict[str, object] = {}
        self.changed = threading.Event()
        self._ctx = Context("pva", nt=False)  # the EPICS_PVA_* environment, like any client
        self._subs = [self._ctx.monitor(spec.name(prefix), self._callback(spec),
                                        notify_disconnect=True) for prefix, spec in pvs]

    def _callback(self, spec: PVSpec) -> Any:
        def update(value: Any) -> None:
            shown = None if isinstance(value, Exception) else decode(spec, value)
            with self._lock:
                self._values[spec.suffix] = shown
            self.changed.set()
        return update

    def values(self) -> dict[str, object]:
        """A copy of the latest values, keyed by suffix."""
        with self._lock:
            return dict(self._values)

    def wait_connected(self, suffixes: Sequence[str], timeout: float) -> None:
        """Return once every PV of ``suffixes`` has a value, or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while any(self.values().get(s) is None for s in suffixes):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.changed.wait(min(left, 0.1))
            self.changed.clear()

    def close(self) -> None:
        """Stop the monitors and the client."""
        for sub in self._subs:
            sub.close()
        self._ctx.close()


def _shown(spec: PVSpec, v: object) -> Text:
    from rich.text import Text

    if v is None:
        return Text("disconnected", style="red")
    if spec.suffix in VERSIONS:
        return Text(f"v{v}" if v else "none")
    if isinstance(v, float):
        return Text(f"{v:.{spec.prec}f}" + (f" {spec.egu}" if spec.egu else ""))
    if spec.length or spec.record == "NTScalar:s":  # free text: one paragraph, cut short
        shown = " ".join(str(v).split())
        return Text(shown if len(shown) <= MESSAGE_CHARS else shown[:MESSAGE_CHARS - 1] + "…")
    return Text(str(v))


def _grid(rows: Iterable[tuple[str, RenderableType]], columns: int = 1,
          label_width: int | None = None) -> RenderableType:
    """Label-value pairs, ``columns`` pairs to a line."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    for _ in range(columns):
        grid.add_column(style="dim", no_wrap=True, min_width=label_width)
        grid.add_column()
    cells: list[RenderableType] = []
    for label, value in rows:
        cells += [label, value]
    for i in range(0, len(cells), 2 * columns):
        grid.add_row(*cells[i:i + 2 * columns])
    return grid


def _workflow(values: Mapping[str, object]) -> RenderableType:
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    g = values.get
    state = g(STATE.suffix)
    state_text = (_shown(STATE, state) if state is None
                  else Text(str(state), style=STATE_STYLE.get(str(state), "bold yellow")))
    progress = g(PROGRESS.suffix)
    bar: RenderableType = _shown(PROGRESS, progress)
    if isinstance(progress, float | int):
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=100, completed=float(progress), width=30),
                    _shown(PROGRESS, float(progress)))
    target, met = g(TARGET.suffix), g(TARGET_MET.suffix)
    quality = _shown(TARGET, target)
    if isinstance(target, float | int) and not target:
        quality = Text("none (Auto runs on every scan)")
    elif target is not None:
        quality.append("  met: Auto paused" if met == "Yes" else "  not met",
                       style="green" if met == "Yes" else "")
    label = len("Quality target")
    return Group(
        _grid([("State", state_text), ("Run id", _shown(RUN_ID, g(RUN_ID.suffix))),
               ("Progress", bar), ("Active runs", _shown(ACTIVE, g(ACTIVE.suffix))),
               ("Auto", _shown(AUTO, g(AUTO.suffix))),
               ("Queued scans", _shown(QUEUED, g(QUEUED.suffix)))], columns=2,
              label_width=label),
        _grid([("Quality target", quality), ("Message", _shown(MESSAGE, g(MESSAGE.suffix)))],
              label_width=label))


def render(values: Mapping[str, object], prefix: str, edge_prefix: str) -> RenderableType:
    """One frame of the view from the latest values (by suffix; missing or None: disconnected).

    Pure, so it is tested without servers.
    """
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    def rows(table: Iterable[tuple[str, PVSpec]]) -> list[tuple[str, RenderableType]]:
        return [(label, _shown(spec, values.get(spec.suffix))) for label, spec in table]

    def nothing_from(name: str, what: str) -> Text:
        return Text(f"disconnected: {name} does not answer; is {what} running, and do "
                    "EPICS_PVA_NAME_SERVERS / EPICS_PVA_ADDR_LIST reach it?", style="red")

    def answers(view: Iterable[PVSpec]) -> bool:
        return any(values.get(s.suffix) is not None for s in view)

    if answers(CONTROL_VIEW):
        middle = Table.grid(expand=True, padding=(0, 1))
        middle.add_column(ratio=1)
        middle.add_column(ratio=1)
        middle.add_row(Panel(_grid(rows(MODELS)), title="Models"),
                       Panel(_grid(rows(SETTINGS)), title="Settings"))
        ioc: list[RenderableType] = [Panel(_workflow(values), title=f"Workflow  {prefix}"),
                                     middle]
    else:
        ioc = [Panel(nothing_from(STATE.name(prefix), "the IOC (ptychoflow ioc)"),
                     title=f"Workflow  {prefix}")]
    edge = (Group(_grid(rows(EDGE_ROWS), columns=2, label_width=len("Bad frames")),
                  _grid(rows([("Message", EDGE_MESSAGE)]), label_width=len("Bad frames")))
            if answers(EDGE_VIEW)
            else nothing_from(EDGE_ROWS[0][1].name(edge_prefix), "the edge (ptychoflow edge)"))
    return Group(*ioc, Panel(edge, title=f"Edge  {edge_prefix}"))


def console() -> Console:
    """A console for stdout: the terminal's own width, or a fixed one for files and pipes."""
    from rich.console import Console

    tty = sys.stdout.isatty()
    return Console(width=None if tty else PLAIN_WIDTH, highlight=False)


def run(args: argparse.Namespace) -> int:
    """Show the view until Ctrl-C (0), or one frame with ``--once``."""
    s = resolve(StatusSettings, "status", args)
    out = console()
    watcher: Watcher | None = None
    try:
        watcher = Watcher([(s.prefix, spec) for spec in CONTROL_VIEW]
                          + [(s.edge_prefix, spec) for spec in EDGE_VIEW],
                          quiet=getattr(args, "log_level", None) != "DEBUG")
        if s.once:
            watcher.wait_connected([v.suffix for v in CONTROL_VIEW + EDGE_VIEW], s.wait)
            values = watcher.values()
            out.print(render(values, s.prefix, s.edge_prefix))
            return 0 if any(v is not None for v in values.values()) else 1
        # Ctrl-C ends the view even where SIGINT came ignored (a shell's background job)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _follow(watcher, out, s)
    except KeyboardInterrupt:
        pass
    finally:
        if watcher is not None:
            watcher.close()
    return 0


def _follow(watcher: Watcher, out: Console, s: StatusSettings) -> None:
    """Redraw in place in a terminal; elsewhere (a pipe, ``ssh host cmd``) print a frame
    at most each second, when something changed.
    """
    from rich.live import Live

    if out.is_terminal:
        with Live(console=out, refresh_per_second=s.refresh) as live:
            while True:
                live.update(render(watcher.values(), s.prefix, s.edge_prefix))
                watcher.changed.wait(1.0 / s.refresh)
                watcher.changed.clear()
    last: dict[str, object] | None = None
    while True:
        values = watcher.values()
        if values != last:
            out.print(render(values, s.prefix, s.edge_prefix))
            out.file.flush()
            last = values
        time.sleep(max(1.0, 1.0 / s.refresh))
