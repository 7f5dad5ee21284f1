"""``ptychoflow gui``: open the PyDM operator screens of ``op/`` for a PV prefix.

The screens are the generated ``op/*.ui`` files (see :mod:`ptychoflow.screens`);
where the package is installed without the repository's ``op/`` folder they are
generated into a temporary folder first, so the command always shows the PV
interface of the installed code. PyDM's Channel Access plugin (pyepics) and
pvAccess plugin (p4p) read the usual EPICS environment variables.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from ptychoflow.pvnames import DEFAULT_PREFIX

HELP = "operator screens (PyDM): the workflow control and the edge live view"

SCREENS = {"workflow": "ptychoflow_workflow", "edge": "ptychoflow_edge"}
REPO_OP = Path(__file__).resolve().parents[1] / "op"


def register(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ptychoflow gui``."""
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help="PV prefix $(P) of the IOC and the edge "
                             f"(default: {DEFAULT_PREFIX!r})")
    parser.add_argument("--screen", choices=[*SCREENS, "all"], default="all",
                        help="which screen to open; all: one window each (default: all)")
    parser.add_argument("--op-dir", default="",
                        help="folder of the .ui files (default: the repository's op/, else "
                             "freshly generated ones)")
    parser.add_argument("--screenshot", default="",
                        help="save each window as FOLDER/<screen>.png after --screenshot-after "
                             "seconds, then exit (for documentation and checks)")
    parser.add_argument("--screenshot-after", type=float, default=5.0,
                        help="seconds to let the screens fill before the screenshot")
    parser.set_defaults(func=run)


def screen_folder(op_dir: str = "") -> Path:
    """Where the ``.ui`` files are: ``op_dir``, the repository's ``op/``, or generated ones."""
    if op_dir:
        return Path(op_dir)
    if all((REPO_OP / f"{stem}.ui").is_file() for stem in SCREENS.values()):
        return REPO_OP
    from ptychoflow.screens.files import write

    folder = Path(tempfile.mkdtemp(prefix="ptychoflow-op-"))
    write(folder)
    return folder


def open_screens(names: list[str], prefix: str, folder: Path) -> dict[str, Any]:
    """Open each named screen in a PyDM main window of its own; needs a running PyDMApplication."""
    from pydm.main_window import PyDMMainWindow

    windows: dict[str, Any] = {}
    for name in names:
        window = PyDMMainWindow(macros={"P": prefix}, hide_nav_bar=True)
        window.open(str(folder / f"{SCREENS[name]}.ui"), macros={"P": prefix})
        window.setWindowTitle(f"ptychoflow {name} {prefix}")
        window.show()
        windows[name] = window
    return windows


def save_screenshots(windows: dict[str, Any], folder: Path) -> list[Path]:
    """Grab each window (works headless with QT_QPA_PLATFORM=offscreen) as a PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, window in windows.items():
        path = folder / f"{name}.png"
        if not window.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        out.append(path)
    return out


def run(args: argparse.Namespace) -> int:
    """Start PyDM with the chosen screen(s); with --screenshot, save PNGs and exit."""
    from pydm import PyDMApplication
    from qtpy.QtCore import QTimer

    names = list(SCREENS) if args.screen == "all" else [args.screen]
    folder = screen_folder(args.op_dir)
    app = PyDMApplication(use_main_window=False, hide_nav_bar=True)
    windows = open_screens(names, args.prefix, folder)
    if args.screenshot:
        def shoot() -> None:
            for path in save_screenshots(windows, Path(args.screenshot)):
                print(path, flush=True)
            app.quit()

        QTimer.singleShot(int(args.screenshot_after * 1000), shoot)
    return int(app.exec_())
