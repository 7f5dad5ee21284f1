"""Which control PVs the IOC judges and acts on: the registry its handlers declare (no EPICS)."""

from __future__ import annotations

import asyncio

import pytest

from ptychoflow.ioc.puts import PutRegistry
from ptychoflow.ioc.server import PUTS
from ptychoflow.pvnames import CONTROL, by_suffix


def test_the_ioc_judges_start_deploy_and_the_scan_path_beyond_their_range():
    assert sorted(PUTS.rules) == ["Model:Deploy", "Scan:Path", "Workflow:Start"]


def test_the_ioc_acts_on_its_commands_at_every_put_and_on_settings_at_a_change():
    assert sorted(PUTS.handlers) == ["Model:Deploy", "Model:QualityTarget", "Workflow:Abort",
                                     "Workflow:Auto", "Workflow:Start"]
    # a second Start after a run, or Auto On while on (reopens the quality gate), must act
    assert sorted(PUTS.every_put) == ["Model:Deploy", "Workflow:Abort", "Workflow:Auto",
                                      "Workflow:Start"]


def test_only_writable_control_pvs_have_rules_or_handlers():
    specs = by_suffix(CONTROL)
    for suffix in [*PUTS.rules, *PUTS.handlers]:
        assert specs[suffix].access == "W", suffix


class _Owner:
    puts = PutRegistry()

    def __init__(self) -> None:
        self.seen: list[int] = []

    @puts.rule(CONTROL.recon_epochs)
    def _even(self, value: int) -> str | None:
        return None if value % 2 == 0 else f"{value} is odd"

    @puts.on_put(CONTROL.recon_epochs, every_put=True)
    async def _record(self, value: int) -> None:
        self.seen.append(value)


def test_a_rule_and_a_handler_are_found_by_their_pv_and_bound_to_their_owner():
    owner = _Owner()
    assert _Owner.puts.check(owner, CONTROL.recon_epochs, 3) == "3 is odd"
    assert _Owner.puts.check(owner, CONTROL.recon_epochs, 4) is None
    assert _Owner.puts.check(owner, CONTROL.train_epochs, 3) is None  # no rule: accepted
    handlers = _Owner.puts.handlers_of(owner)
    assert list(handlers) == ["Recon:Epochs"]
    asyncio.run(handlers["Recon:Epochs"](4))
    assert owner.seen == [4]
    assert _Owner.puts.every_put == {"Recon:Epochs"}


def test_a_pv_cannot_get_two_rules():
    registry = PutRegistry()
    registry.rule(CONTROL.scan_path)(lambda owner, value: None)
    with pytest.raises(ValueError, match="two put rules for Scan:Path"):
        registry.rule(CONTROL.scan_path)(lambda owner, value: None)
