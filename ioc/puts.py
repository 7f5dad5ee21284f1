"""Put rules and put handlers declared on their PV, as caproto attaches a putter to its PV.

Reading a handler shows which PV it serves (``@PUTS.on_put(CONTROL.workflow_abort)``),
and no chain of ``if suffix == ...`` elsewhere has to be kept in step with the
handlers: the IOC asks the registry for the rule and the handler of a PV.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ptychoflow.pvnames import PVSpec

F = TypeVar("F", bound=Callable[..., Any])


class PutRegistry:
    """The put rules (synchronous: refuse or accept) and handlers (after acceptance) by PV.

    Both are plain functions of ``(owner, value)``, registered at class definition;
    :meth:`check` and :meth:`handlers_of` bind them to one owner.
    """

    def __init__(self) -> None:
        self.rules: dict[str, Callable[[Any, Any], str | None]] = {}
        self.handlers: dict[str, Callable[[Any, Any], Any]] = {}
        self.every_put: set[str] = set()

    def rule(self, spec: PVSpec) -> Callable[[F], F]:
        """Register ``f(owner, value) -> problem or None`` as the put rule of ``spec``."""
        def register(f: F) -> F:
            if spec.suffix in self.rules:
                raise ValueError(f"two put rules for {spec.suffix}; merge them into one")
            self.rules[spec.suffix] = f
            return f
        return register

    def on_put(self, spec: PVSpec, every_put: bool = False) -> Callable[[F], F]:
        """Register ``async f(owner, value)`` to run after a put of ``spec`` is accepted.

        ``every_put``: also when the value does not change (a command such as
        ``Workflow:Start`` must act on each put, not only on a change).
        """
        def register(f: F) -> F:
            if spec.suffix in self.handlers:
                raise ValueError(f"two put handlers for {spec.suffix}; merge them into one")
            self.handlers[spec.suffix] = f
            if every_put:
                self.every_put.add(spec.suffix)
            return f
        return register

    def check(self, owner: Any, spec: PVSpec, value: Any) -> str | None:
        """What ``spec``'s rule says about ``value`` (``None``: no rule, or accepted)."""
        rule = self.rules.get(spec.suffix)
        return rule(owner, value) if rule is not None else None

    def handlers_of(self, owner: Any) -> dict[str, Callable[[Any], Any]]:
        """The handlers bound to ``owner``, by suffix, as softioc's ``on_update`` wants them."""
        return {suffix: f.__get__(owner) for suffix, f in self.handlers.items()}
