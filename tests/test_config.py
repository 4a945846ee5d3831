"""Settings from arguments and TASKFORGE_* variables, with clear errors for bad values; and
prefixes that keep two apps on one Redis apart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from taskforge import ConfigError, JobNotFound, JobStatus, Settings, TaskForge
from tests.support.workers import AppFactory, WorkerPool
from tests.support.workers import worker_pool as _worker_pool


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    yield from _worker_pool()


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.redis_url is None
    assert s.prefix == "taskforge"
    assert s.lease_seconds == 30 and s.heartbeat_seconds == 2
    assert s.max_redeliveries == 5 and s.default_max_attempts == 3
    assert s.completed_ttl == 24 * 3600 and s.dead_ttl == 7 * 24 * 3600
    assert s.max_payload_bytes == 1024 * 1024
    assert s.publish_events is True and s.wait_aof is False
    assert s.reply_spin_us == 500


def test_every_variable_is_read() -> None:
    env = {
        "TASKFORGE_REDIS_URL": "redis://example.invalid:6390/2",
        "TASKFORGE_PREFIX": "shop.prod",
        "TASKFORGE_LEASE_SECONDS": "12.5",
        "TASKFORGE_COMPLETED_TTL": "60",
        "TASKFORGE_DEAD_TTL": "120",
        "TASKFORGE_RETRY_BASE_SECONDS": "0.5",
        "TASKFORGE_RETRY_CAP_SECONDS": "30",
        "TASKFORGE_SOCKET_TIMEOUT": "2",
        "TASKFORGE_MAX_PAYLOAD_BYTES": "4096",
        "TASKFORGE_MAX_REDELIVERIES": "2",
        "TASKFORGE_MAX_ATTEMPTS": "7",
        "TASKFORGE_WAIT_REPLICAS": "1",
        "TASKFORGE_WAIT_AOF": "yes",
        "TASKFORGE_REPLY_SPIN_US": "0",
        "UNRELATED": "ignored",
    }
    s = Settings.from_env(env)
    assert s.redis_url == "redis://example.invalid:6390/2"
    assert s.prefix == "shop.prod"
    assert (s.lease_seconds, s.completed_ttl, s.dead_ttl) == (12.5, 60, 120)
    assert (s.retry_base_seconds, s.retry_cap_seconds, s.socket_timeout) == (0.5, 30, 2)
    assert (s.max_payload_bytes, s.max_redeliveries, s.default_max_attempts) == (4096, 2, 7)
    assert (s.wait_replicas, s.wait_aof, s.reply_spin_us) == (1, True, 0)
    # Leases are renewed several times per lease period.
    assert s.heartbeat_seconds == 2.0
    assert Settings.from_env({"TASKFORGE_LEASE_SECONDS": "3"}).heartbeat_seconds == 0.5


def test_empty_variables_mean_unset_and_arguments_win() -> None:
    env = {"TASKFORGE_PREFIX": "", "TASKFORGE_LEASE_SECONDS": "", "TASKFORGE_MAX_ATTEMPTS": "9"}
    s = Settings.from_env(env, default_max_attempts=2, lease_seconds=None)
    assert (s.prefix, s.lease_seconds, s.default_max_attempts) == ("taskforge", 30, 2)
    for value, expected in (("1", True), ("true", True), ("ON", True), ("0", False), ("no", False)):
        assert Settings.from_env({"TASKFORGE_WAIT_AOF": value}).wait_aof is expected


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TASKFORGE_LEASE_SECONDS", "thirty", "TASKFORGE_LEASE_SECONDS='thirty' is not a number"),
        ("TASKFORGE_LEASE_SECONDS", "0.5", "lease_seconds"),
        ("TASKFORGE_LEASE_SECONDS", "100000", "lease_seconds"),
        ("TASKFORGE_LEASE_SECONDS", "nan", "lease_seconds"),
        ("TASKFORGE_MAX_ATTEMPTS", "2.5", "TASKFORGE_MAX_ATTEMPTS='2.5' is not a whole number"),
        ("TASKFORGE_MAX_ATTEMPTS", "0", "default_max_attempts"),
        ("TASKFORGE_MAX_REDELIVERIES", "0", "max_redeliveries"),
        ("TASKFORGE_MAX_PAYLOAD_BYTES", "100", "max_payload_bytes"),
        ("TASKFORGE_WAIT_REPLICAS", "-1", "wait_replicas"),
        ("TASKFORGE_COMPLETED_TTL", "0", "completed_ttl"),
        ("TASKFORGE_COMPLETED_TTL", "inf", "completed_ttl"),
        ("TASKFORGE_DEAD_TTL", "-5", "dead_ttl"),
        ("TASKFORGE_RETRY_BASE_SECONDS", "nan", "retry_base_seconds"),
        ("TASKFORGE_RETRY_CAP_SECONDS", "0", "retry_cap_seconds"),
        ("TASKFORGE_DEAD_TTL", "inf", "dead_ttl"),
        ("TASKFORGE_SOCKET_TIMEOUT", "-1", "socket_timeout"),
        ("TASKFORGE_SOCKET_TIMEOUT", "0", "socket_timeout"),
        ("TASKFORGE_WAIT_AOF", "maybe", "TASKFORGE_WAIT_AOF"),
        ("TASKFORGE_REPLY_SPIN_US", "-1", "reply_spin_us"),
        ("TASKFORGE_REPLY_SPIN_US", "20000", "reply_spin_us"),
        ("TASKFORGE_PREFIX", "has space", "prefix"),
        ("TASKFORGE_PREFIX", "a{b}", "prefix"),
        ("TASKFORGE_PREFIX", "x" * 65, "prefix"),
        ("TASKFORGE_REDIS_URL", "http://localhost:6379", "unknown scheme"),
        ("TASKFORGE_REDIS_URL", "localhost:6379", "unknown scheme"),
    ],
)
def test_bad_values_are_clear_errors(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Settings.from_env({name: value})


def test_unknown_and_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.from_env({}, lease_secs=5)
    with pytest.raises(ConfigError, match="unknown setting"):
        TaskForge("redis://127.0.0.1:1", lease_secs=5)
    with pytest.raises(ConfigError, match="lease_seconds"):
        TaskForge("redis://127.0.0.1:1", lease_seconds=0)


def test_app_settings_from_url_prefix_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFORGE_REDIS_URL", "redis://from-env.invalid:1/0")
    monkeypatch.setenv("TASKFORGE_PREFIX", "envprefix")
    monkeypatch.setenv("TASKFORGE_LEASE_SECONDS", "9")
    from_env = TaskForge()
    assert from_env.url == "redis://from-env.invalid:1/0"
    assert (from_env.settings.prefix, from_env.settings.lease_seconds) == ("envprefix", 9)
    explicit = TaskForge("redis://explicit.invalid:2/0", prefix="mine", lease_seconds=4)
    assert explicit.url == "redis://explicit.invalid:2/0"
    assert (explicit.settings.prefix, explicit.settings.lease_seconds) == ("mine", 4)
    # Given settings are used as they are; arguments change them, falsy ones included.
    base = Settings(redis_url="redis://base.invalid:3/0", prefix="base")
    assert TaskForge(settings=base).settings is base
    changed = TaskForge(settings=base, publish_events=False, wait_replicas=0, prefix="other")
    assert changed.settings.publish_events is False
    assert changed.settings.prefix == "other"
    assert changed.settings.redis_url == "redis://base.invalid:3/0"


def test_where_hides_credentials() -> None:
    forge = TaskForge("redis://user:s3cret@db.invalid:6380/1")
    assert forge.where == "redis://***@db.invalid:6380/1"
    assert "s3cret" not in repr(forge)


def test_two_prefixes_on_one_redis_do_not_see_each_other(
    make_app: AppFactory, workers: WorkerPool, redis_url: str
) -> None:
    alpha = make_app(prefix="alpha")
    beta = make_app(prefix="beta")
    for forge in (alpha, beta):

        @forge.task(queue="shared", name="work")
        def work(x: int) -> int:
            return x

    a_job = alpha.enqueue_with("work", (1,), key="same-key", job_id="SAMEID")
    b_job = beta.enqueue_with("work", (2,), key="same-key", job_id="SAMEID")
    assert a_job.created and b_job.created, "ids and keys are per prefix"

    workers.start(beta, ["shared"])
    assert b_job.result(timeout=15) == 2
    assert a_job.status() is JobStatus.QUEUED, "beta's worker never touches alpha's jobs"
    assert alpha.job("SAMEID").info().args == [1]
    assert alpha.inspector.stats(["shared"])[0].completed == 0
    assert beta.inspector.stats(["shared"])[0].completed == 1
    assert beta.inspector.purge("shared", "completed") == 1
    with pytest.raises(JobNotFound):
        beta.job("SAMEID")
    assert alpha.job("SAMEID").status() is JobStatus.QUEUED
    alpha.enqueue_with("work", (3,), queue="alpha-only")
    assert "alpha-only" not in beta.inspector.queues()
    assert len(beta.inspector.workers()) == 1 and alpha.inspector.workers() == []

    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() for k in client.scan_iter(count=1000)]
    finally:
        client.close()
    assert keys and all(k.startswith(("alpha:", "beta:")) for k in keys), keys
