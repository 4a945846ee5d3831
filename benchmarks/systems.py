"""The systems the harness measures: where each one's adapter lives and what its venv holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
ADAPTERS_DIR = BENCH_DIR / "adapters"
VENVS_DIR = BENCH_DIR / ".venvs"

# Every venv gets redis-py with hiredis: the job body and the adapters' waiting loops use it.
# pip picks the newest redis-py that the peer allows (arq pins it below 6).
_REDIS = "redis[hiredis]"


@dataclass(frozen=True)
class System:
    """One queue under test."""

    name: str
    label: str
    requirements: tuple[str, ...]
    adapter: str
    # Distributions whose installed versions go into the results.
    distributions: tuple[str, ...]
    supports_delay: bool = True

    @property
    def adapter_path(self) -> Path:
        return ADAPTERS_DIR / self.adapter


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System(
            "taskforge",
            "TaskForge",
            (),  # the project's own venv, or an editable install of this repo
            "peer_taskforge.py",
            ("taskforge", "redis", "hiredis"),
        ),
        System("arq", "arq", ("arq==0.28.0", _REDIS), "peer_arq.py", ("arq", "redis", "hiredis")),
        System("rq", "RQ", ("rq==3.0.0", _REDIS), "peer_rq.py", ("rq", "redis", "hiredis")),
        System(
            "celery",
            "Celery",
            ("celery[redis]==5.7.0", _REDIS),
            "peer_celery.py",
            ("celery", "kombu", "redis", "hiredis"),
        ),
        System(
            "dramatiq",
            "Dramatiq",
            ("dramatiq[redis]==2.2.1", _REDIS),
            "peer_dramatiq.py",
            ("dramatiq", "redis", "hiredis"),
        ),
        System(
            "saq",
            "SAQ",
            # saq 0.26.4 imports typing_extensions without declaring it.
            ("saq==0.26.4", "typing-extensions", _REDIS),
            "peer_saq.py",
            ("saq", "redis", "hiredis"),
        ),
        System(
            "taskiq",
            "taskiq",
            ("taskiq==0.13.0", "taskiq-redis==1.2.4", _REDIS),
            "peer_taskiq.py",
            ("taskiq", "taskiq-redis", "redis", "hiredis"),
        ),
        System(
            "streaq",
            "streaq",
            ("streaq==7.2.0", _REDIS),
            "peer_streaq.py",
            ("streaq", "redis", "hiredis"),
        ),
        System(
            "huey", "Huey", ("huey==3.5.4", _REDIS), "peer_huey.py", ("huey", "redis", "hiredis")
        ),
    )
}

PEERS: tuple[str, ...] = tuple(name for name in SYSTEMS if name != "taskforge")

# The runner's own tools: the report (Rich, matplotlib) and the bare redis-py ceiling.
TOOLS_REQUIREMENTS: tuple[str, ...] = ("rich>=13", "matplotlib>=3.8", _REDIS)
