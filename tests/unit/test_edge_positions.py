"""Frame positions: attributes first, a positions file when a detector sends none."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ptychoflow.edge.input.positions import PositionSource, load_positions
from ptychoflow.ntnda import Frame


def _frame(uid: int, **attrs: object) -> Frame:
    return Frame(np.zeros((2, 2)), uid, 0.0, dict(attrs))


def test_attributes_win_and_missing_ones_are_explained() -> None:
    src = PositionSource("")
    assert src.position(_frame(3, PositionX=1e-7, PositionY=-2e-7)) == (1e-7, -2e-7)
    assert "no PositionX/PositionY" in str(src.position(_frame(3)))
    assert "not finite" in str(src.position(_frame(3, PositionX=np.nan, PositionY=0.0)))


@pytest.mark.parametrize("kind", ["csv", "txt", "npy", "h5"])
def test_positions_file_rows_follow_unique_id(tmp_path: Path, kind: str) -> None:
    xy = np.array([[1e-7, 2e-7], [3e-7, 4e-7], [5e-7, 6e-7]])
    path = tmp_path / f"pos.{kind}"
    if kind == "csv":
        np.savetxt(path, xy, delimiter=",")
    elif kind == "txt":
        np.savetxt(path, xy)
    elif kind == "npy":
        np.save(path, xy)
    else:
        with h5py.File(path, "w") as fh:
            fh["/entry/instrument/positions/x"] = xy[:, 0]
            fh["/entry/instrument/positions/y"] = xy[:, 1]
    src = PositionSource(str(path))
    assert src.position(_frame(2)) == pytest.approx((3e-7, 4e-7))
    assert "beyond" in str(src.position(_frame(4)))


def test_bad_positions_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        load_positions(tmp_path / "p.txt")
    with pytest.raises(ValueError, match="does not exist"):
        load_positions(tmp_path / "nope.npy")
