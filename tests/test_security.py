"""Security: TLS to Redis (with certificates the test makes), the least-privilege ACL user (every
flow runs as that user, and the server must log no denial), clear errors for missing
permissions, no pickle, only registered tasks run, payload limits and name validation."""

from __future__ import annotations

import ast
import asyncio
import logging
import pickle
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from taskforge import JobStatus, PayloadTooLarge, TaskForge, ValidationError
from taskforge.config import Settings
from taskforge.errors import ConfigError, DurabilityError, JobDead, RedisUnavailable
from taskforge.redis.acl import acl_rules, acl_user_line
from taskforge.redis.connection import connect_async, connect_sync
from taskforge.redis.driver import PermissionDenied
from taskforge.redis.keys import QueueKeys
from tests.conftest import ServerFactory
from tests.support.ha import Ledger, running_worker
from tests.support.servers import (
    RedisCluster,
    RedisServer,
    TLSMaterial,
    make_tls_material,
    server_binary,
    server_kind,
    server_version,
    tls_supported,
    wait_until,
)

PREFIX = "tfsec"
SRC = Path(__file__).resolve().parents[1] / "src" / "taskforge"
# Redis >= 7.2 and Valkey know WAITAOF and CLIENT SETINFO (older servers reject rules naming them).
RECENT = server_kind() == "valkey" or server_version(server_binary()) >= (7, 2)


def _tls_url(server: RedisServer, tls: TLSMaterial, *, client_cert: bool = True) -> str:
    query = f"ssl_ca_certs={quote(str(tls.ca_cert))}"
    if client_cert:
        query += f"&ssl_certfile={quote(str(tls.client_cert))}"
        query += f"&ssl_keyfile={quote(str(tls.client_key))}"
    return f"{server.url}/0?{query}"


def _app(url: str, ledger: Ledger | None = None, **settings: Any) -> TaskForge:
    forge = TaskForge(url, prefix=PREFIX, **settings)
    ledger = ledger or Ledger()

    @forge.task
    def double(n: int) -> int:
        ledger.record(str(n))
        return 2 * n

    @forge.task(max_attempts=2, retry_backoff=0.01)
    def broken() -> None:
        raise RuntimeError("always")

    @forge.task
    async def slow() -> None:
        await asyncio.sleep(30)

    return forge


# -- TLS ------------------------------------------------------------------------------------------


def test_producer_and_worker_over_tls_with_a_client_certificate(
    tls_redis: RedisServer, tls_material: TLSMaterial
) -> None:
    url = _tls_url(tls_redis, tls_material)
    assert url.startswith("rediss://")
    forge = _app(url)
    with running_worker(forge, ["default"], concurrency=2):
        assert forge.enqueue("double", 21).result(timeout=15) == 42

        async def produce() -> int:
            job = await forge.enqueue_async("double", 4)
            result: int = await job.result_async(timeout=15)
            await forge.aclose()
            return result

        assert asyncio.run(produce()) == 8
    assert forge.health()["ok"]
    clients = tls_redis.execute("CLIENT", "LIST").decode()
    assert "cmd=" in clients  # the harness itself reached the TLS-only port
    forge.close()


def test_a_server_requiring_client_certificates_refuses_clients_without_one(
    redis_factory: ServerFactory, tls_material: TLSMaterial
) -> None:
    if not tls_supported():
        pytest.skip(f"the {server_kind()} server binary was built without TLS")
    server = redis_factory(name="mtls", tls=tls_material, tls_auth_clients="yes")
    with pytest.raises(RedisUnavailable, match="cannot reach Redis"):
        TaskForge(_tls_url(server, tls_material, client_cert=False), prefix=PREFIX).health()
    forge = TaskForge(_tls_url(server, tls_material), prefix=PREFIX)
    assert forge.health()["ok"]
    forge.close()


def test_a_server_certificate_from_another_ca_is_refused(
    tls_redis: RedisServer, tmp_path: Path
) -> None:
    stranger = make_tls_material(tmp_path / "other-ca")
    url = _tls_url(tls_redis, stranger, client_cert=False)
    with pytest.raises(RedisUnavailable, match="certificate verify failed"):
        TaskForge(url, prefix=PREFIX).health()


def test_tls_options_reach_cluster_and_sentinel_clients(tls_material: TLSMaterial) -> None:
    """(No TLS cluster is started: the options must reach the node connections.)"""
    query = (
        f"ssl_ca_certs={tls_material.ca_cert}&ssl_certfile={tls_material.client_cert}"
        f"&ssl_keyfile={tls_material.client_key}&ssl_check_hostname=false"
    )
    cluster = connect_async(f"redis+cluster://127.0.0.1:1?{query}", 1, 1)  # connects lazily
    kwargs = cluster.nodes_manager.connection_kwargs
    assert kwargs["connection_class"].__name__ == "SSLConnection"
    assert kwargs["ssl_check_hostname"] is False
    assert kwargs["ssl_ca_certs"] == str(tls_material.ca_cert)
    with pytest.raises(RedisUnavailable, match="cannot reach any seed node"):
        connect_sync(f"redis+cluster://127.0.0.1:1?{query}", 1, 1)  # connects at once
    sentinel = connect_sync(f"redis+sentinel://127.0.0.1:1/m?{query}&sentinel_ssl=no", 1, 1)
    assert sentinel.connection_pool.connection_kwargs["ssl_keyfile"] == str(tls_material.client_key)
    sentinels = sentinel.connection_pool.sentinel_manager.sentinels
    assert "ssl_ca_certs" not in sentinels[0].connection_pool.connection_kwargs
    sentinel.close()


# -- the least-privilege ACL user --------------------------------------------------------------


def _denials(server: RedisServer) -> list[str]:
    """What the server's ACL LOG recorded, as 'reason:object' (the optional CONFIG GET, the
    maxmemory-policy check, is left out: TaskForge works without it)."""
    out = []
    for entry in server.execute("ACL", "LOG"):
        fields = (
            entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
        )
        text = {k.decode(): v.decode() if isinstance(v, bytes) else v for k, v in fields.items()}
        if text.get("object") != "config|get":
            out.append(f"{text.get('reason')}:{text.get('object')} ({text.get('username')})")
    return out


def _drive_every_flow(forge: TaskForge, ledger: Ledger) -> None:
    """Producer, worker and inspector calls, as an application and its operators make them."""
    inspector = forge.inspector
    with running_worker(forge, ["default", "other"], concurrency=4, recover_seconds=0.5):
        assert forge.enqueue("double", 1).result(timeout=15) == 2
        with pytest.raises(JobDead):
            forge.enqueue("broken").result(timeout=15)
        forge.enqueue_many("double", [(n,) for n in range(2, 12)])
        keyed = forge.enqueue_with("double", (12,), key="order-12", delay=0.1, priority="high")
        assert keyed.result(timeout=15) == 24
        assert forge.enqueue_with("double", (13,), queue="other").result(timeout=15) == 26
        running = forge.enqueue("slow")
        wait_until(lambda: running.status() is JobStatus.ACTIVE, 15, "the slow job to start")
        assert running.cancel()
        assert forge.enqueue_with("double", (14,), delay=60).cancel()
        assert forge.job(keyed.id).status() is JobStatus.COMPLETED
        assert inspector.queues() == ["default", "other"]
        assert {s.queue for s in inspector.stats()} == {"default", "other"}
        for state in ("queued", "scheduled", "active", "dead", "completed"):
            inspector.jobs("default", state)
        assert len(inspector.dead_letters("default")) == 1
        assert inspector.requeue_dead("default") == 1
        inspector.pause("other")
        inspector.resume("other")
        assert len(inspector.workers()) == 1
        inspector.check_server()
        assert inspector.purge("default", "completed") > 0
        if hasattr(inspector, "throughput"):
            inspector.throughput()
        assert forge.health()["ok"]

        async def events() -> None:
            for queues in (None, ["default"]):
                stream = inspector.events_async(queues=queues, idle_seconds=0.1)
                for _ in range(100):  # the first read subscribes: events flow from then on
                    await forge.enqueue_async("double", 99)
                    if await anext(stream) is not None:
                        break
                else:
                    raise AssertionError("no job event arrived")
                await stream.aclose()  # type: ignore[attr-defined]
            await forge.aclose()

        asyncio.run(events())


def test_every_flow_runs_as_the_documented_acl_user(redis_factory: ServerFactory) -> None:
    line = acl_user_line("tf-app", "s3cret", PREFIX, recent=RECENT)
    server = redis_factory(name="acl", acl_lines=[line], appendonly=True)
    url = server.url_for(username="tf-app", password="s3cret")
    ledger = Ledger()
    forge = _app(url, ledger)
    _drive_every_flow(forge, ledger)
    # Durability waits are permitted too (no replica here: WAIT answers 0 at once).
    durable = _app(url, wait_replicas=1, wait_timeout_ms=10, wait_aof=RECENT)
    with pytest.raises(DurabilityError):
        durable.enqueue("double", 0)
    assert _denials(server) == []
    forge.close()
    durable.close()


def test_the_acl_user_cannot_touch_other_prefixes_or_other_channels(
    redis_factory: ServerFactory,
) -> None:
    server = redis_factory(
        name="acl", acl_lines=[acl_user_line("tf-app", "pw", PREFIX, recent=RECENT)]
    )
    url = server.url_for(username="tf-app", password="pw")
    other = TaskForge(url, prefix="another-app")
    with pytest.raises(PermissionDenied, match=r"key pattern ~<prefix>:\*"):
        other.enqueue("double", 1)
    user = server.client(username="tf-app", password="pw")
    with pytest.raises(Exception, match=r"(?i)no permissions"):
        user.execute_command("PUBLISH", "another-app:events:default", "x")
    with pytest.raises(Exception, match=r"(?i)no permissions"):
        user.execute_command("FLUSHALL")
    with pytest.raises(Exception, match=r"(?i)no permissions"):
        user.execute_command("CONFIG", "SET", "appendonly", "no")
    other.close()


def test_the_acl_user_runs_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    """On a cluster the client also needs the topology commands (acl_rules(cluster=True))."""
    rules = acl_rules(PREFIX, cluster=True, recent=RECENT)
    cluster = RedisCluster(config={"user": f"tf-app on >pw {rules}"}).start()
    try:
        seeds = ",".join(f"127.0.0.1:{m.port}" for m in cluster.masters)
        forge = _app(f"redis+cluster://tf-app:pw@{seeds}")
        queues = [f"q{n}" for n in range(6)]
        with running_worker(forge, queues, concurrency=4):
            jobs = [forge.enqueue_with("double", (n,), queue=queues[n % 6]) for n in range(30)]
            assert [job.result(timeout=15) for job in jobs] == [2 * n for n in range(30)]
            assert len(forge.inspector.stats()) == 6
        forge.close()
        denied = [d for node in cluster.masters for d in _denials(node)]
        assert denied == []
    finally:
        cluster.stop()


@pytest.mark.parametrize(
    ("removed", "named"),
    [
        ("+evalsha ", r"may not run EVALSHA: add \+evalsha"),
        ("+hset ", r"may not run HSET \(inside a TaskForge script\): add \+hset"),
        ("+publish ", r"may not run PUBLISH \(inside a TaskForge script\)"),
        (f"&{PREFIX}:events:* ", r"channel pattern &<prefix>:events:\*"),
        (f"~{PREFIX}:* ", r"key pattern ~<prefix>:\*"),
        ("+blpop ", r"may not run BLPOP: add \+blpop"),
    ],
    ids=["command", "command-in-script", "publish", "channel", "keys", "blocking"],
)
def test_a_missing_permission_is_named_in_the_error(
    removed: str, named: str, redis_factory: ServerFactory
) -> None:
    rules = acl_rules(PREFIX, recent=RECENT) + " "
    assert removed in rules
    server = redis_factory(
        name="acl", acl_lines=[f"user tf-app on >pw {rules.replace(removed, '')}"]
    )
    forge = _app(server.url_for(username="tf-app", password="pw"))
    with pytest.raises(PermissionDenied, match=named) as caught:
        forge.enqueue("double", 1).result(timeout=0.2)
    assert "docs/deployment.md" in str(caught.value)
    forge.close()


def test_a_worker_without_bzmpop_says_so(
    redis_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rules = acl_rules(PREFIX, recent=RECENT).replace("+bzmpop", "")
    server = redis_factory(name="acl", acl_lines=[f"user tf-app on >pw {rules}"])
    forge = _app(server.url_for(username="tf-app", password="pw"))
    with caplog.at_level(logging.WARNING, "taskforge"), running_worker(forge, ["default"]):
        wait_until(
            lambda: any("may not run BZMPOP" in r.getMessage() for r in caplog.records),
            15,
            "the worker to report the missing permission",
        )
    forge.close()


def test_wrong_credentials_are_refused_clearly(redis_factory: ServerFactory) -> None:
    server = redis_factory(
        name="acl", acl_lines=[acl_user_line("tf-app", "right", PREFIX, recent=RECENT)]
    )
    forge = TaskForge(server.url_for(username="tf-app", password="wrong"), prefix=PREFIX)
    with pytest.raises(PermissionDenied, match="refused the credentials"):
        forge.health()
    assert "wrong" not in forge.where  # credentials never appear in messages
    forge.close()


# -- what runs, and what is stored -----------------------------------------------------------


_UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "dill", "cloudpickle", "shelve"}


def test_no_module_can_unpickle_or_evaluate_input() -> None:
    """Decoding never runs code: no pickle-like module is imported, no eval/exec is called."""
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(SRC)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
                assert not names & _UNSAFE_MODULES, f"{where} imports {names & _UNSAFE_MODULES}"
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in _UNSAFE_MODULES, where
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), f"{where} calls {node.func.id}()"


class _Exploit:
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_pwned, ())


def _pwned() -> None:
    raise AssertionError("a payload was unpickled")


def test_a_pickled_payload_is_dead_lettered_and_never_unpickled(redis_url: str) -> None:
    forge = _app(redis_url)
    forge.inspector.pause("default")
    job = forge.enqueue("double", 1)
    key = QueueKeys(PREFIX, "default").job(job.id)
    admin = TaskForge(redis_url, prefix=PREFIX).sync_driver().client
    admin.hset(key, "payload", pickle.dumps(_Exploit()))  # what an attacker with access could do
    forge.inspector.resume("default")
    with running_worker(forge, ["default"]), pytest.raises(JobDead) as caught:
        job.result(timeout=15)
    assert caught.value.error_type == "SerializationError"
    assert "not valid JSON" in caught.value.error_message
    forge.close()


def test_workers_run_only_registered_task_names(redis_url: str) -> None:
    producer = TaskForge(redis_url, prefix=PREFIX)  # knows no tasks: enqueues by name only
    hostile = ["os.system", "subprocess.run", "builtins.eval", "tests.test_security._pwned"]
    jobs = [producer.enqueue_with(name, ("echo owned",)) for name in hostile]
    ledger = Ledger()
    worker_app = _app(redis_url, ledger)
    with running_worker(worker_app, ["default"]):
        for job in jobs:
            with pytest.raises(JobDead) as caught:
                job.result(timeout=15)
            assert caught.value.error_type == "UnknownTask"
            assert "no function is registered under that name" in caught.value.error_message
    assert ledger.runs == {}
    producer.close()
    worker_app.close()


# -- limits and names -------------------------------------------------------------------------


def test_payloads_over_the_limit_are_refused_before_anything_is_written(redis_url: str) -> None:
    assert Settings().max_payload_bytes == 1024 * 1024
    forge = _app(redis_url)
    big = "x" * (1024 * 1024)
    with pytest.raises(PayloadTooLarge) as caught:
        forge.enqueue("double", big)
    assert "over the 1048576-byte limit" in str(caught.value)
    assert "pass a reference" in str(caught.value)
    with pytest.raises(PayloadTooLarge):
        forge.enqueue_many("double", [(1,), (2,), (big,)])  # one bad item: nothing written
    admin = TaskForge(redis_url, prefix=PREFIX).sync_driver().client
    assert admin.dbsize() == 0
    roomy = _app(redis_url, max_payload_bytes=2 * 1024 * 1024)
    assert roomy.enqueue("double", big).created
    small = TaskForge(
        redis_url,
        prefix=PREFIX,
        settings=Settings.from_env({"TASKFORGE_MAX_PAYLOAD_BYTES": "2048"}),
    )
    with pytest.raises(PayloadTooLarge, match="2048-byte limit"):
        small.enqueue("double", "y" * 3000)
    with pytest.raises(ConfigError, match="at least 1024"):
        Settings(max_payload_bytes=10)
    for app in (forge, roomy, small):
        app.close()


HOSTILE_QUEUES = ["a}b", "{x}", "x y", "", "../x", "a\nb", "q\n", "q\u00e9", "q*", "a" * 129, "-x"]
HOSTILE_TASKS = ['a"b', "x}", "t\\", "t\n", "", "9lives", "a b"]
HOSTILE_IDS = ["a}b", "a:b", "../x", "a b", "", "x*"]


def test_names_that_could_escape_their_keys_are_rejected(redis_url: str) -> None:
    forge = _app(redis_url)
    for queue in HOSTILE_QUEUES:
        with pytest.raises(ValidationError, match="invalid queue name"):
            forge.enqueue_with("double", (1,), queue=queue)
    for name in HOSTILE_TASKS:
        with pytest.raises(ValidationError, match="invalid task name"):
            forge.enqueue(name)
    for job_id in HOSTILE_IDS:
        with pytest.raises(ValidationError, match="job_id"):
            forge.enqueue_with("double", (1,), job_id=job_id)
    for prefix in ("a:b", "a{b}", "", "a b", "x*", "tf\n"):
        with pytest.raises(ConfigError, match="prefix"):
            TaskForge(redis_url, prefix=prefix)
    admin = TaskForge(redis_url, prefix=PREFIX).sync_driver().client
    assert admin.dbsize() == 0
    forge.close()


def test_accepted_names_and_keys_stay_inside_the_prefix_and_the_queue_slot(
    redis_factory: ServerFactory,
) -> None:
    """Valid but odd names and idempotency keys, used by the ACL user of PREFIX: any key
    outside `PREFIX:*` would be refused by the server."""
    server = redis_factory(
        name="acl", acl_lines=[acl_user_line("tf-app", "pw", PREFIX, recent=RECENT)]
    )
    forge = _app(server.url_for(username="tf-app", password="pw"))
    for queue in ("a:b", "x.y-z_w", "other-app:q", "0", "Q" * 128):
        keys = QueueKeys(PREFIX, queue)
        assert all(k.startswith(f"{PREFIX}:{{{queue}}}:") for k in keys.script_keys)
        forge.enqueue_with("double", (1,), queue=queue, key="}{:*?\n evil", job_id="J1")
    assert _denials(server) == []
    forge.close()


def test_credentials_in_urls_never_reach_messages() -> None:
    forge = TaskForge("redis+cluster://user:hunter2@127.0.0.1:1", prefix=PREFIX)
    assert "hunter2" not in forge.where and "hunter2" not in repr(forge)
    with pytest.raises(ConfigError) as caught:
        TaskForge("redis+cluster://user:hunter2@127.0.0.1:1?nope=1", prefix=PREFIX).health()
    assert "hunter2" not in str(caught.value)


def test_tls_connections_are_reused(tls_redis: RedisServer, tls_material: TLSMaterial) -> None:
    """The TLS handshake happens once per connection, not once per call."""
    forge = TaskForge(_tls_url(tls_redis, tls_material), prefix=PREFIX)
    forge.health()
    before = int(tls_redis.info("stats")["total_connections_received"])
    for n in range(200):
        forge.enqueue("double", n)
    # At most one more: the producer thread's own connection for script calls.
    assert int(tls_redis.info("stats")["total_connections_received"]) <= before + 1
    forge.close()


def test_the_documented_acl_line_is_the_one_the_suite_runs_as() -> None:
    docs = (SRC.parents[1] / "docs" / "deployment.md").read_text()
    assert acl_user_line("taskforge", "CHANGE-ME", "taskforge") in docs
    extra_recent = acl_rules(recent=True).removeprefix(acl_rules()).strip()
    extra_cluster = acl_rules(cluster=True).removeprefix(acl_rules()).strip()
    assert f"`{extra_recent}`" in docs and f"`{extra_cluster}`" in docs
