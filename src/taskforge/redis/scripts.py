"""Loading and running the Lua scripts: EVALSHA first, the full source on NOSCRIPT.

A Redis restart or failover empties the script cache; falling back to EVAL both runs the script and
caches it again on the node that owns the keys, so cluster nodes fill their caches as needed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["SCRIPT_NAMES", "Script", "load_script"]

SCRIPT_NAMES = (
    "cancel",
    "complete",
    "enqueue",
    "extend",
    "fail",
    "fetch",
    "park",
    "pause",
    "progress",
    "promote",
    "purge",
    "recover",
    "release",
    "requeue_dead",
    "watch",
    "worker_beat",
)


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _read(name: str) -> str:
    return resources.files("taskforge.redis").joinpath("scripts", f"{name}.lua").read_text("utf-8")


@cache
def load_script(name: str) -> Script:
    """The script ``name`` with the shared prelude prepended; cached, read once per process."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no script named {name!r}")
    source = _read("_prelude") + "\n" + _read(name)
    return Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())
