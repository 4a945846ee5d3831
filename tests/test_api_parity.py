"""The sync and async APIs are twins: every public ``x`` with an ``x_async`` takes the same
parameters (names, kinds, defaults, annotations), and no I/O method lacks its twin."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from taskforge import Inspector, Job, Task, TaskForge

CLASSES = (TaskForge, Job, Task, Inspector)

# Public callables without a twin, on purpose: no I/O, or the async half of a pair with
# another name (close/aclose), or async by nature (a pub/sub stream).
SYNC_ONLY = {
    "TaskForge": {
        "add_middleware",
        "async_driver",
        "close",
        "keys",
        "retry_policy",
        "sync_driver",
        "task",
        "use_url",
    },
    "Job": set(),
    "Task": set(),
    "Inspector": set(),
}
ASYNC_ONLY = {
    "TaskForge": {"aclose", "close_async_connections"},
    "Job": set(),
    "Task": set(),
    "Inspector": {"events_async"},
}


def _public_methods(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_") and not inspect.isclass(member)
    }


def _twins(cls: type) -> list[tuple[str, Any, Any]]:
    methods = _public_methods(cls)
    return [
        (name, methods[name], methods[f"{name}_async"])
        for name in sorted(methods)
        if f"{name}_async" in methods
    ]


def test_there_are_twins_to_compare() -> None:
    counts = {cls.__name__: len(_twins(cls)) for cls in CLASSES}
    assert counts["TaskForge"] >= 6 and counts["Job"] >= 4 and counts["Inspector"] >= 10
    assert counts["Task"] >= 3


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_twins_take_the_same_parameters(cls: type) -> None:
    for name, sync, asynchronous in _twins(cls):
        assert inspect.iscoroutinefunction(asynchronous), f"{cls.__name__}.{name}_async"
        assert not inspect.iscoroutinefunction(sync), f"{cls.__name__}.{name}"
        ours = list(inspect.signature(sync).parameters.values())
        theirs = list(inspect.signature(asynchronous).parameters.values())
        described = [(p.name, p.kind, p.default, p.annotation) for p in ours]
        assert described == [(p.name, p.kind, p.default, p.annotation) for p in theirs], (
            f"{cls.__name__}.{name} and {name}_async differ"
        )
        assert inspect.signature(sync).return_annotation in (
            inspect.signature(asynchronous).return_annotation,
        ), f"{cls.__name__}.{name}: return types differ"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_no_method_lacks_its_twin(cls: type) -> None:
    methods = _public_methods(cls)
    twinned = {n for name, _, _ in _twins(cls) for n in (name, f"{name}_async")}
    alone = set(methods) - twinned
    sync_only = {
        n
        for n in alone
        if not (inspect.iscoroutinefunction(methods[n]) or inspect.isasyncgenfunction(methods[n]))
    }
    async_only = alone - sync_only
    assert sync_only == SYNC_ONLY[cls.__name__], "a new sync method needs an _async twin"
    assert async_only == ASYNC_ONLY[cls.__name__], "a new async method needs a sync twin"
