"""Entry point. Re-runs itself inside the harness's own tools venv (Rich, matplotlib, redis-py),
built on demand under benchmarks/.venvs/_tools, so any Python >= 3.11 can start it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .systems import REPO_DIR, TOOLS_REQUIREMENTS, VENVS_DIR
from .venvs import ensure_venv

TOOLS_VENV = VENVS_DIR / "_tools"


def _in_tools_venv() -> bool:
    return Path(sys.prefix).resolve() == TOOLS_VENV.resolve()


def main() -> None:
    if not _in_tools_venv():
        python = ensure_venv("_tools", TOOLS_REQUIREMENTS)
        path = os.environ.get("PYTHONPATH")
        env = {
            **os.environ,
            "PYTHONPATH": f"{REPO_DIR}{os.pathsep}{path}" if path else str(REPO_DIR),
        }
        env.pop("VIRTUAL_ENV", None)
        os.execve(str(python), [str(python), "-m", "benchmarks", *sys.argv[1:]], env)
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
