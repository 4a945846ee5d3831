"""Builds one virtualenv per peer under benchmarks/.venvs/<name>/, on demand, from PyPI.

The peers cannot share one environment (arq pins redis-py < 6, kombu needs >= 6.1, taskiq-redis
1.2 needs taskiq 0.13), so each gets its own. A stamp file records what was installed; a venv is
rebuilt when its requirement list changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .systems import REPO_DIR, VENVS_DIR

STAMP = ".bench-requirements"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _stamp_text(requirements: tuple[str, ...]) -> str:
    return "\n".join(requirements) + "\n"


def ensure_venv(name: str, requirements: tuple[str, ...], *, log: bool = True) -> Path:
    """Returns the python of benchmarks/.venvs/<name>, creating or refreshing it when needed."""
    venv = VENVS_DIR / name
    stamp = venv / STAMP
    want = _stamp_text(requirements)
    python = venv_python(venv)
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    if log:
        print(f"[venv] building {venv} ({' '.join(requirements)})", file=sys.stderr, flush=True)
    if venv.exists():
        shutil.rmtree(venv)
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *requirements], check=True)
    stamp.write_text(want)
    return python


def _base_python() -> str:
    """The interpreter to build venvs from: the one running us, outside any venv."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if Path(base).exists() else sys.executable


def _can_import(python: Path, module: str) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", f"import {module}"], capture_output=True, timeout=60, check=False
    )
    return probe.returncode == 0


def taskforge_python() -> Path | None:
    """The project's venv when it has TaskForge; else our own editable install of the repo.

    Returns None while the repo has no importable taskforge package yet.
    """
    project = venv_python(REPO_DIR / ".venv")
    if _can_import(project, "taskforge.worker") and _can_import(project, "redis"):
        return project
    if not (REPO_DIR / "src" / "taskforge" / "__init__.py").exists():
        return None
    python = ensure_venv("taskforge", (f"-e{REPO_DIR}",))
    return python if _can_import(python, "taskforge") else None
