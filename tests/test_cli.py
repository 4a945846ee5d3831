"""The ``taskforge`` command line: enqueue and job in-process (typer's CliRunner), and the
worker, the embedded server and the demo as real subprocesses. Every run is given the test
server's TASKFORGE_REDIS_URL and a private TASKFORGE_HOME."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from taskforge import JobDead, JobStatus
from taskforge.cli import app
from taskforge.embedded import stop_embedded
from tests.support.workers import AppFactory, WorkerPool, wait_for, wait_for_status
from tests.support.workers import worker_pool as _worker_pool


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    yield from _worker_pool()


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of every CLI run: the test's server, a private home, wide output."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "TASKFORGE_REDIS_URL": redis_url,
        "TASKFORGE_HOME": str(home),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskforge.cli import _common

    monkeypatch.setattr(_common.console, "width", 200)
    monkeypatch.setattr(_common.err_console, "width", 200)


def invoke(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    return result


def subprocess_env(env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **env, "PYTHONUNBUFFERED": "1"}


# -- enqueue ------------------------------------------------------------------------------------


def test_enqueue_with_every_option(make_app: AppFactory, env: dict[str, str]) -> None:
    result = invoke(
        env,
        "enqueue",
        "mail.send",
        "--args",
        '["ada@example.com", 3]',
        "--kwargs",
        '{"subject": "hello", "cc": null}',
        "--queue",
        "emails",
        "--delay",
        "30",
        "--priority",
        "high",
        "--key",
        "welcome-ada",
        "--max-attempts",
        "7",
        "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["queue"] == "emails" and out["status"] == "scheduled" and out["created"] is True

    forge = make_app()
    info = forge.job(out["id"]).info()
    assert info.task == "mail.send"
    assert (info.args, info.kwargs) == (["ada@example.com", 3], {"subject": "hello", "cc": None})
    assert (info.priority, info.max_attempts, info.key) == (20, 7, "welcome-ada")
    assert info.due_at is not None and info.created_at is not None
    assert 29 <= (info.due_at - info.created_at).total_seconds() <= 31

    again = invoke(env, "enqueue", "mail.send", "--queue", "emails", "--key", "welcome-ada")
    assert again.exit_code == 0
    assert "already exists" in again.stdout and out["id"] in again.stdout

    plain = invoke(env, "enqueue", "report.build", "--priority", "5")
    assert plain.exit_code == 0 and "enqueued" in plain.stdout
    [job_id] = re.findall(r"[0-9A-Z]{26}", plain.stdout)
    record = forge.job(job_id).info()
    assert (record.queue, record.status, record.priority) == ("default", JobStatus.QUEUED, 5)
    assert (record.args, record.kwargs) == ([], {})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--args", "[1,"], "--args is not valid JSON"),
        (["--args", '{"a": 1}'], "--args must be a JSON array"),
        (["--kwargs", "nope"], "--kwargs is not valid JSON"),
        (["--kwargs", "[1]"], "--kwargs must be a JSON object"),
        (["--priority", "urgent"], "unknown priority"),
        (["--queue", "bad queue"], "invalid queue name"),
        (["--delay", "-3"], "delay must be non-negative"),
    ],
)
def test_enqueue_bad_input_is_a_clear_error(
    env: dict[str, str], redis_url: str, args: list[str], message: str
) -> None:
    result = invoke(env, "enqueue", "t", *args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.output
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0, "nothing is written"
    finally:
        client.close()


def test_enqueue_bad_task_name(env: dict[str, str]) -> None:
    result = invoke(env, "enqueue", "has space")
    assert result.exit_code == 1 and "invalid task name" in result.stderr


# -- job ----------------------------------------------------------------------------------------


def test_job_shows_a_job_as_text_and_json(
    make_app: AppFactory, workers: WorkerPool, env: dict[str, str]
) -> None:
    forge = make_app()

    @forge.task(queue="math")
    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    @forge.task(queue="math", max_attempts=1)
    def explode() -> None:
        raise ZeroDivisionError("the numbers did not add up")

    workers.start(forge, ["math"])
    done = add.enqueue(2, 3)
    assert done.result(timeout=15) == {"sum": 5}
    dead = explode.enqueue()
    with pytest.raises(JobDead):
        dead.result(timeout=15)

    as_json = invoke(env, "job", done.id, "--json")
    assert as_json.exit_code == 0
    data = json.loads(as_json.stdout)
    assert (data["id"], data["queue"], data["task"], data["status"]) == (
        done.id,
        "math",
        "add",
        "completed",
    )
    assert data["result"] == {"sum": 5} and data["args"] == [2, 3] and data["attempt"] == 1

    text = invoke(env, "job", done.id, "--queue", "math")
    assert text.exit_code == 0
    for expected in (done.id, "add", "math", "completed", '{"sum": 5}', "[2, 3]"):
        assert expected in text.stdout

    failed = invoke(env, "job", dead.id)
    assert failed.exit_code == 0
    assert "dead" in failed.stdout
    assert "ZeroDivisionError: the numbers did not add up" in failed.stdout
    assert "Traceback" in failed.stdout, "the remote traceback is shown"

    missing = invoke(env, "job", "01NOSUCHJOB0000000000000000")
    assert missing.exit_code == 1 and "no job with id" in missing.stderr


# -- worker (a real process) --------------------------------------------------------------------

APP = """
    import time

    from taskforge import TaskForge

    forge = TaskForge()

    @forge.task(queue="alpha")
    def add(a, b):
        return a + b

    @forge.task(queue="beta")
    def slow(seconds):
        time.sleep(seconds)
        return "slept"
"""


def test_worker_runs_jobs_and_stops_gracefully_on_sigterm(
    make_app: AppFactory, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "cliapp.py").write_text(textwrap.dedent(APP))
    producer = make_app()
    command = [sys.executable, "-m", "taskforge", "worker", "cliapp:forge"]
    proc = subprocess.Popen(
        [*command, "--queues", "alpha,beta", "--concurrency", "2", "--grace", "20"],
        cwd=tmp_path,
        env=subprocess_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        [info] = wait_for(producer.inspector.workers, 30, "the worker to register")
        assert (info.queues, info.concurrency, info.pid) == (["alpha", "beta"], 2, proc.pid)
        # The producer knows no tasks: it names the queue.
        jobs = [producer.enqueue_with("add", (i, 1), queue="alpha") for i in range(5)]
        assert [job.result(timeout=15) for job in jobs] == [1, 2, 3, 4, 5]

        running = producer.enqueue_with("slow", (1.0,), queue="beta")
        wait_for_status(running, JobStatus.ACTIVE)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    log = out.decode()
    assert proc.returncode == 0, log
    assert running.status() is JobStatus.COMPLETED, "the in-flight job finished first"
    assert running.result(timeout=1) == "slept"
    assert "SIGTERM" in log and "stopped" in log
    assert producer.inspector.workers() == [], "it unregistered"


def test_worker_with_a_bad_app_path_says_so(env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskforge", "worker", "nosuchmodule:forge"],
        cwd=tmp_path,
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "cannot import 'nosuchmodule'" in proc.stderr


# -- the embedded server ------------------------------------------------------------------------


def test_redis_start_status_stop(env: dict[str, str]) -> None:
    home = Path(env["TASKFORGE_HOME"])

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskforge", "redis", *args],
            env=subprocess_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        started = run()
        assert started.returncode == 0, started.stderr
        [url] = re.findall(r"redis://127\.0\.0\.1:\d+/0", started.stdout)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert port not in (6379, 0)
        assert str(home) in started.stdout.replace("\n", "")

        client = redis.Redis.from_url(url)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            assert Path(client.config_get("dir")["dir"]) == (home / "data").resolve()
            client.set("k", "v")
        finally:
            client.close()

        status = run("--status")
        assert status.returncode == 0 and url in status.stdout
        reused = run()
        assert reused.returncode == 0 and url in reused.stdout, "a running server is reused"

        stopped = run("--stop")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        after = run("--status")
        assert after.returncode == 1 and "not running" in after.stdout
        assert run("--stop").stdout.strip() == "no embedded server runs"
        assert list((home / "data").rglob("*.aof*")), "the AOF stays on disk"
    finally:
        stop_embedded(home)


# -- demo ---------------------------------------------------------------------------------------


def test_demo_runs_and_prints_the_summary(env: dict[str, str], redis_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskforge", "demo"],
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert redis_url in out and "Demo summary" in out

    def row(task: str) -> list[str]:
        [line] = [line for line in out.splitlines() if f" {task} " in f" {line} "]
        return re.findall(r"\S+", line.replace("│", " "))

    # task, jobs, completed, retries, dead, canceled, ...
    assert row("resize_image")[:6] == ["resize_image", "150", "150", "0", "0", "0"]
    assert row("send_email")[:3] == ["send_email", "60", "60"]
    assert row("sync_inventory")[:3] == ["sync_inventory", "25", "25"]
    assert row("charge_card")[:6] == ["charge_card", "5", "0", "10", "5", "0"]
    assert row("generate_report")[:6] == ["generate_report", "1", "0", "0", "0", "1"]
    assert row("mystery_task")[:6] == ["mystery_task", "1", "0", "0", "1", "0"]
    # It used the test's server, under its own prefix.
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists("taskforge-demo:{-}:queues")
    finally:
        client.close()
