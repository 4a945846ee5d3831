"""Operations as data: "run this script (or command) with these keys and args, parse the reply
this way". The sync and async drivers run the same operations, so the two APIs cannot diverge."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from .scripts import Script, load_script

__all__ = ["LazyOps", "Op", "command", "script"]

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


class LazyOps(Sequence[Op[Any]]):
    """Operations to pipeline, built one by one on first access: ``head`` as given, then
    ``build(0)``, ``build(1)``, ... (each built once), which must be script calls. A driver that
    writes each operation as soon as it has it lets Redis run the first while the rest are
    still being built."""

    def __init__(
        self, count: int, build: Callable[[int], Op[Any]], head: Sequence[Op[Any]] = ()
    ) -> None:
        self._head = list(head)
        self._count = count
        self._build = build
        self._built: list[Op[Any]] = []

    def __len__(self) -> int:
        return len(self._head) + self._count

    @overload
    def __getitem__(self, index: int) -> Op[Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[Op[Any]]: ...
    def __getitem__(self, index: int | slice) -> Op[Any] | list[Op[Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < len(self._head):
            return self._head[index]
        built = self._built
        while len(built) <= index - len(self._head):
            built.append(self._build(len(built)))
        return built[index - len(self._head)]

    def all_fit(self, fits: Callable[[Op[Any]], bool]) -> bool:
        """``fits`` holds for every operation, judged without building any (built ones are
        script calls, which ``fits`` must accept)."""
        return all(map(fits, self._head))
