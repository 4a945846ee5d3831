"""Operations as data: "run this script (or command) with these keys and args, parse the reply
this way". The sync and async drivers run the same operations, so the two APIs cannot diverge."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .scripts import Script, load_script

__all__ = ["Op", "command", "script"]

T = TypeVar("T")
Arg = str | bytes | int | float


@dataclass(frozen=True, slots=True)
class Op(Generic[T]):
    """One Redis round trip. Exactly one of ``script`` and ``command`` is set."""

    script: Script | None
    command: tuple[Arg, ...]
    keys: Sequence[str]
    args: Sequence[Arg]
    parse: Callable[[Any], T]
    blocking: bool = False
    """Runs on the connections kept for blocking reads (longer socket timeout)."""


def _identity(reply: Any) -> Any:
    return reply


def script(
    name: str, keys: Sequence[str], args: Sequence[Arg], parse: Callable[[Any], T] = _identity
) -> Op[T]:
    return Op(load_script(name), (), keys, args, parse)


def command(*parts: Arg, parse: Callable[[Any], T] = _identity, blocking: bool = False) -> Op[T]:
    return Op(None, parts, (), (), parse, blocking)
