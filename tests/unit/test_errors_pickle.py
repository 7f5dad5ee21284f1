"""Every error the project defines survives pickling, as it must to leave a worker process.

A stage runs in a worker (a process pool, Parsl, Globus Compute) and its exception comes
back pickled. An exception class whose ``__init__`` takes other arguments than its
message unpickles with a ``TypeError`` in the parent, and a process pool then reports
that its worker "terminated abruptly": a truncated scan file read by a stage was shown
as a dead worker, retried, and failed without its cause.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import pytest

import ptychoflow


def _error_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    roots = [ptychoflow] + [importlib.import_module(f"ptychoflow.{name}")
                            for name in ("edge", "ioc", "remote")]
    infos = [i for r in roots for i in pkgutil.walk_packages(r.__path__, r.__name__ + ".")]
    for info in infos:
        if ".bench." in info.name or info.name.endswith((".__main__", ".cli")):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional back end's library that is not installed
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


ERRORS = _error_classes()


def test_the_walk_finds_the_errors_that_cross_processes() -> None:
    names = {c.__name__ for c in ERRORS}
    assert {"ScanFileError", "StageError", "TransferError", "Cancelled"} <= names


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_an_error_comes_back_from_pickle_with_its_message(cls: type[BaseException]) -> None:
    try:
        params = [p for p in inspect.signature(cls).parameters.values()
                  if p.default is inspect.Parameter.empty
                  and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except ValueError:  # no __init__ of its own: the message is its one argument
        params = []
    exc = cls(*[f"argument {i}" for i in range(len(params))] or ["what went wrong"])
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and str(back) == str(exc)
