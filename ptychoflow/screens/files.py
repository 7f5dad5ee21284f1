"""The screen files in ``op/``: written from :mod:`ptychoflow.screens`' description.

``python -m ptychoflow.screens [FOLDER]`` rewrites them (default ``op``); a test
compares the committed files with :func:`generated`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ptychoflow.screens import SCREENS
from ptychoflow.screens.phoebus import bob_text
from ptychoflow.screens.pydmui import ui_text


def generated() -> dict[str, str]:
    """File name -> text of every screen file in ``op/``."""
    files: dict[str, str] = {}
    for screen in SCREENS:
        files[screen.stem + ".bob"] = bob_text(screen)
        files[screen.stem + ".ui"] = ui_text(screen)
    return files


def write(folder: Path) -> list[Path]:
    """(Re)write every screen file into ``folder``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in generated().items():
        path = folder / name
        path.write_text(text)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m ptychoflow.screens [FOLDER]``: rewrite the screens (default ``op``)."""
    args = sys.argv[1:] if argv is None else argv
    for path in write(Path(args[0] if args else "op")):
        print(path)
    return 0
