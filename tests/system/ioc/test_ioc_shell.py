"""Shell metacharacters in Scan:Path run nothing: refused, or a file name like any other."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from ioc_helpers import make_scan, wait_for

from ptychoflow.pvnames import STATES

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def _text(v: Any) -> str:
    raw = v.raw.value
    return raw if isinstance(raw, str) else bytes(raw).rstrip(b"\0").decode()


def _state(pva: Any, ioc: Any) -> str:
    return STATES[int(pva.get(ioc.pv("Workflow:State_RBV")).raw.value.index)]


def test_shell_metacharacters_in_scan_path_run_nothing(iocs, pva, tmp_path: Path) -> None:
    from p4p.client.thread import RemoteError

    ioc = iocs.start()
    marker = tmp_path / f"pwned-{secrets.token_hex(4)}"
    good = make_scan(ioc.data / "scan-001.h5")
    pva.put(ioc.pv("Scan:Path"), str(good))
    for payload in (f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`",
                    f"| touch {marker}", f"\ntouch {marker}\n", f"&& touch {marker}"):
        for value in (payload, f"{good}{payload}", f"scan-001.h5{payload}"):
            with pytest.raises(RemoteError):  # no such file under the data root
                pva.put(ioc.pv("Scan:Path"), value, timeout=5)
            assert ioc.proc.poll() is None, ioc.log()
    assert _text(pva.get(ioc.pv("Scan:Path"))) == str(good)

    # a real scan file whose name a shell would run: accepted, and a whole run reads it
    # (relative to the IOC's folder, where a shell would run it; a file name has no "/")
    name = (f"scan $(touch {marker.name}) `touch {marker.name}`; touch {marker.name} "
            f"| cat && touch {marker.name}.h5")
    odd = make_scan(ioc.data / name)
    pva.put(ioc.pv("Scan:Path"), str(odd))
    before = int(pva.get(ioc.pv("Workflow:RunId_RBV")))
    pva.put(ioc.pv("Recon:Epochs"), 2)
    pva.put(ioc.pv("Train:Epochs"), 2)
    pva.put(ioc.pv("Workflow:Start"), 1)
    wait_for(lambda: int(pva.get(ioc.pv("Workflow:RunId_RBV"))) > before
             and _state(pva, ioc) in ("Done", "Failed", "Aborted"), 90, "run end", ioc)
    assert _state(pva, ioc) == "Done", _text(pva.get(ioc.pv("Workflow:Message_RBV")))
    assert ioc.proc.poll() is None
    assert list(tmp_path.rglob(f"{marker.name}*")) == []  # nothing ran `touch`
    assert not (Path.cwd() / marker.name).exists()
