"""What the offline Globus tests share: the services answered by ``responses``, and
the records the orchestrator writes to, kept in a dict."""

from __future__ import annotations

from typing import Any

import responses


def requests_to(offline: responses.RequestsMock, method: str, tail: str) -> list[Any]:
    """The requests made with ``method`` to a URL ending in ``tail`` (query left out)."""
    return [c.request for c in offline.calls
            if c.request.method == method and str(c.request.url).split("?")[0].endswith(tail)]


class Sink:
    """The IOC's records, as far as the orchestrator sees them."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.messages: list[str] = []

    def post(self, values: dict[str, Any]) -> None:
        self.values.update(values)

    def message(self, text: str) -> None:
        self.messages.append(text)

    def finished(self) -> None:
        pass
