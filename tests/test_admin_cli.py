"""The admin commands (queues, workers, dead, pause, resume, purge, watch, serve) against a real
Redis, in text and with --json."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from taskforge import TaskForge, Worker
from taskforge.cli import app
from tests.support.servers import wait_until

PREFIX = "cli"


class WorkerThread:
    def __init__(self, forge: TaskForge, queues: list[str]) -> None:
        self.worker = Worker(forge, queues, 4, registry_seconds=0.2, grace_seconds=1)
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.worker.run_async()), daemon=True
        )

    def __enter__(self) -> Worker:
        self.thread.start()
        assert self.worker.started.wait(10), "the worker did not start"
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        assert self.worker.stopped.wait(20), "the worker did not stop"
        self.thread.join(5)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as on a 160-column terminal (the runner's output is not one, so 80 by default)."""
    from taskforge.cli import _common

    monkeypatch.setattr(_common.console, "width", 160)
    monkeypatch.setattr(_common.err_console, "width", 160)


@pytest.fixture
def forge(redis_url: str) -> Iterator[TaskForge]:
    forge = TaskForge(redis_url, prefix=PREFIX)
    release = threading.Event()

    @forge.task(queue="mail", max_attempts=1)
    def bounce(to: str) -> None:
        raise ValueError(f"mailbox {to} is full")

    @forge.task(queue="mail")
    def send(to: str) -> str:
        return to

    @forge.task(queue="reports")
    def hold() -> None:
        release.wait(30)

    forge.release = release  # type: ignore[attr-defined]
    yield forge
    release.set()
    forge.close()


def cli(forge: TaskForge, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, [*args, "--url", forge.url, "--prefix", PREFIX])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


def cli_json(forge: TaskForge, *args: str) -> Any:
    return json.loads(cli(forge, *args, "--json").stdout)


def make_dead(forge: TaskForge, n: int) -> list[str]:
    jobs = [forge.enqueue("bounce", f"u{i}") for i in range(n)]
    with WorkerThread(forge, ["mail"]):
        wait_until(lambda: forge.inspector.stats(["mail"])[0].dead >= n, 15, f"{n} dead jobs")
    return [j.id for j in jobs]


def test_queues(forge: TaskForge) -> None:
    for i in range(3):
        forge.enqueue("send", f"u{i}")
    forge.enqueue_with("hold", delay=600)
    text = cli(forge, "queues").stdout
    assert "mail" in text and "reports" in text and "queued" in text
    rows = {r["queue"]: r for r in cli_json(forge, "queues")["queues"]}
    assert rows["mail"]["queued"] == 3 and rows["reports"]["scheduled"] == 1
    assert rows["mail"]["oldest_waiting_seconds"] >= 0 and rows["mail"]["paused"] is False
    assert rows["mail"]["counters"]["enqueued"] == 3


def test_workers(forge: TaskForge) -> None:
    assert cli_json(forge, "workers") == {"workers": []}
    assert "no live workers" in cli(forge, "workers").stdout
    job = forge.enqueue("hold")
    with WorkerThread(forge, ["reports", "mail"]) as worker:

        def busy() -> Any:
            return [w for w in cli_json(forge, "workers")["workers"] if job.id in w["active_jobs"]]

        (shown,) = wait_until(busy, 10, "the worker to report its job")
        assert shown["id"] == worker.worker_id and shown["queues"] == ["reports", "mail"]
        assert shown["concurrency"] == 4
        try:
            text = cli(forge, "workers").stdout
            assert "1/4" in text and "reports,mail" in text and job.id in text
        finally:
            forge.release.set()  # type: ignore[attr-defined]


def test_dead_list_show_requeue_purge(forge: TaskForge) -> None:
    assert cli_json(forge, "dead", "list") == {"jobs": []}
    assert "empty" in cli(forge, "dead", "list").stdout
    ids = make_dead(forge, 4)
    listed = cli_json(forge, "dead", "list")["jobs"]
    assert {j["id"] for j in listed} == set(ids)
    assert listed[0]["error"]["type"] == "ValueError"
    assert cli_json(forge, "dead", "list", "mail", "--task", "send") == {"jobs": []}
    assert len(cli_json(forge, "dead", "list", "mail", "--limit", "2")["jobs"]) == 2
    assert "ValueError: mailbox" in cli(forge, "dead", "list").stdout

    shown = cli(forge, "dead", "show", ids[0]).stdout
    assert "ValueError" in shown and "Traceback" in shown and '["u0"]' in shown
    assert cli_json(forge, "dead", "show", ids[0], "--queue", "mail")["status"] == "dead"
    assert "no job with id" in cli(forge, "dead", "show", "01NOSUCHJOB", code=1).stderr

    assert cli_json(forge, "dead", "requeue", ids[0]) == {"requeued": 1}
    assert forge.job(ids[0]).status() == "queued"
    assert "requeued 0" in cli(forge, "dead", "requeue", ids[0]).stdout  # not dead any more
    assert "--all" in cli(forge, "dead", "requeue", code=1).stderr
    assert cli_json(forge, "dead", "purge", ids[1]) == {"deleted": 1}
    assert cli_json(forge, "dead", "requeue", "--all", "--task", "send") == {"requeued": 0}
    assert cli_json(forge, "dead", "requeue", "--all", "--queue", "mail", "--task", "bounce") == {
        "requeued": 2
    }
    forge.inspector.purge("mail", "queued")
    make_dead(forge, 2)
    assert "--all" in cli(forge, "dead", "purge", code=1).stderr
    assert cli_json(forge, "dead", "purge", "--all", "--yes") == {"deleted": 2}


def test_pause_resume_purge(forge: TaskForge) -> None:
    for i in range(3):
        forge.enqueue("send", f"u{i}")
    assert cli_json(forge, "pause", "mail") == {"queue": "mail", "paused": True}
    assert forge.inspector.stats(["mail"])[0].paused is True
    assert "paused" in cli(forge, "queues").stdout
    assert "resumed" in cli(forge, "resume", "mail").stdout
    assert forge.inspector.stats(["mail"])[0].paused is False
    assert "no job or worker has used" in cli(forge, "pause", "fresh").stderr
    assert "invalid queue name" in cli(forge, "pause", "{bad}", code=1).stderr
    out = cli_json(forge, "purge", "mail", "--state", "queued", "--yes")
    assert out == {"queue": "mail", "state": "queued", "deleted": 3}
    assert (
        "cannot purge state 'active'"
        in cli(forge, "purge", "mail", "--state", "active", code=1).stderr
    )
    assert "deleted 0" in cli(forge, "purge", "mail", "--state", "dead").stdout


def test_watch(forge: TaskForge) -> None:
    forge.enqueue("send", "x")
    out = cli(forge, "watch", "--count", "2", "--interval", "0.1", "--json").stdout.splitlines()
    first, second = (json.loads(line) for line in out)
    (row,) = first["queues"]
    assert row["queue"] == "mail" and row["queued"] == 1 and row["completed_per_second"] is None
    assert second["queues"][0]["completed_per_second"] == 0
    text = cli(forge, "watch", "--count", "2", "--interval", "0.1").stdout
    assert "mail" in text and "/s" in text


def test_serve_refuses_public_address_without_token(forge: TaskForge) -> None:
    result = CliRunner().invoke(
        app, ["serve", "--host", "0.0.0.0", "--url", forge.url], env={"TASKFORGE_API_TOKEN": ""}
    )
    assert result.exit_code == 2 and "without a token" in result.stderr
    result = CliRunner().invoke(
        app, ["serve", "--host", "0.0.0.0", "--token", "short", "--url", forge.url]
    )
    assert result.exit_code == 2 and "at least 16" in result.stderr


def test_serve_answers_and_stops_cleanly_with_an_open_event_stream(redis_url: str) -> None:
    import signal
    import subprocess
    import sys

    import httpx

    from tests.support.servers import free_port

    port = free_port()
    env = dict(os.environ, TASKFORGE_REDIS_URL=redis_url, TASKFORGE_API_TOKEN="")
    server = subprocess.Popen(
        [sys.executable, "-m", "taskforge", "serve", "--port", str(port), "--log-level", "warning"],
        env=env, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert server.poll() is None
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 20, "taskforge serve to answer")
        assert httpx.get(f"{base}/readyz").json()["ok"] is True
        assert httpx.get(f"{base}/healthz", headers={"Host": "evil.example"}).status_code == 403
        with httpx.stream("GET", f"{base}/v1/events", timeout=20) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == "event: ready"
            server.send_signal(signal.SIGTERM)
            assert next(line for line in lines if line.startswith("event:")) == "event: end"
            assert next(lines) == 'data: {"reason":"shutdown"}'
        # uvicorn ends by re-raising the signal it caught, as a process should.
        assert server.wait(10) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
        assert b"Traceback" not in server.stderr.read()  # type: ignore[union-attr]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stderr.close()  # type: ignore[union-attr]
