"""Every endpoint of the HTTP API, with good and bad input, against a real Redis."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn

from taskforge import TaskForge
from taskforge.web import WebSettings, create_app
from taskforge.web.app import CSRF_HEADER, operations
from tests.support.servers import free_port, wait_until
from tests.web.conftest import TOKEN, client_for, make_forge, poll, running_worker


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "message"} and body["message"], body
    return str(body["message"])


# -- health, spec, routing --------------------------------------------------------------------


async def test_health_ready_and_spec(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"ok": True}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ok"] is True
    assert ready.json()["server"] in ("redis", "valkey")
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    assert documented == {(op.path, op.method) for op in operations()}
    assert len(documented) == 21
    assert "EnqueueRequest" in spec["components"]["schemas"]
    assert spec["paths"]["/v1/jobs"]["post"]["security"] == []  # no token configured


async def test_ready_says_503_when_redis_is_down() -> None:
    port = free_port()
    forge = TaskForge(f"redis://127.0.0.1:{port}", socket_timeout=0.5, connect_timeout=0.5)
    async with client_for(create_app(forge, WebSettings())) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert "Redis" in error_of(await c.get("/readyz"), 503)
    await forge.aclose()


async def test_unknown_routes_and_methods_are_json(client: httpx.AsyncClient) -> None:
    assert "no such route" in error_of(await client.get("/v2/nothing"), 404)
    error_of(await client.put("/v1/jobs"), 405)
    error_of(await client.post("/healthz"), 405)


# -- enqueue ----------------------------------------------------------------------------------


async def test_enqueue_then_get(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/jobs", json={"task": "send", "args": ["a@b.c"], "priority": "high"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["queue"] == "emails" and job["created"] is True
    assert job["priority"] == 20 and job["args"] == ["a@b.c"] and job["attempt"] == 0
    got = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert got["id"] == job["id"] and got["created_at"] and "created" not in got
    got = await client.get(f"/v1/jobs/{job['id']}", params={"queue": "emails"})
    assert got.status_code == 200


async def test_enqueue_options(client: httpx.AsyncClient) -> None:
    at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = await client.post(
        "/v1/jobs",
        json={"task": "unknown_here", "kwargs": {"n": 1}, "queue": "other", "at": at,
              "max_attempts": 7, "timeout": 2.5, "priority": -5},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["status"], job["queue"], job["max_attempts"], job["timeout"], job["priority"]) == (
        "scheduled", "other", 7, 2.5, -5,
    )  # fmt: skip
    assert datetime.fromisoformat(job["due_at"]) > datetime.now(UTC) + timedelta(minutes=59)
    delayed = await client.post("/v1/jobs", json={"task": "send", "delay": 60})
    assert delayed.json()["status"] == "scheduled"


async def test_idempotency_key_returns_the_existing_job(client: httpx.AsyncClient) -> None:
    body = {"task": "send", "args": ["x"], "key": "welcome:x"}
    first = await client.post("/v1/jobs", json=body)
    again = await client.post("/v1/jobs", json={**body, "args": ["other"]})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["created"] is False
    assert again.json()["args"] == ["x"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "body is required"),
        (b"[1, 2]", 422, "Expected `object`"),
        (b'{"args": []}', 422, "missing required field `task`"),
        (b'{"task": 5}', 422, "Expected `str`, got `int`"),
        (b'{"task": "send", "args": {"a": 1}}', 422, "Expected `array`"),
        (b'{"task": "send", "wat": 1}', 422, "unknown field `wat`"),
        (b'{"task": "no spaces"}', 422, "task"),
        (b'{"task": "send", "queue": "{bad}"}', 422, "queue"),
        (b'{"task": "send", "priority": "urgent"}', 422, "priority"),
        (b'{"task": "send", "priority": 5000}', 422, "priority"),
        (b'{"task": "send", "delay": -1}', 422, "delay"),
        (b'{"task": "send", "delay": 1, "at": "2030-01-01T00:00:00Z"}', 422, "delay"),
        (b'{"task": "send", "at": "2030-01-01T00:00:00"}', 422, "timezone"),
        (b'{"task": "send", "at": "tomorrow"}', 422, "datetime"),
        (b'{"task": "send", "max_attempts": 0}', 422, "max_attempts"),
        (b'{"task": "send", "timeout": 0}', 422, "timeout"),
        (b'{"task": "send", "key": ""}', 422, "key"),
    ],
)
async def test_enqueue_rejects_bad_input(
    client: httpx.AsyncClient, body: bytes, status: int, says: str
) -> None:
    r = await client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert says.lower() in error_of(r, status).lower()
    assert (await client.get("/v1/queues")).json()["queues"] == []  # nothing was written


async def test_enqueue_rejects_other_media_types(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/jobs", content=b'{"task": "send"}', headers={"content-type": "text/plain"}
    )
    assert "application/json" in error_of(r, 415)


async def test_oversized_bodies_get_413(forge: TaskForge) -> None:
    async with client_for(create_app(forge, WebSettings(max_body_bytes=4096))) as c:
        big = {"task": "send", "args": ["x" * 5000]}
        assert "4096-byte limit" in error_of(await c.post("/v1/jobs", json=big), 413)
        ok = await c.post("/v1/jobs", json={"task": "send", "args": ["x" * 3000]})
        assert ok.status_code == 201

        async def chunks() -> Any:  # no Content-Length: the limit holds while streaming
            for _ in range(10):
                yield b" " * 1000

        streamed = await c.post(
            "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
        )
        error_of(streamed, 413)


async def test_default_body_limit_is_one_mebibyte(client: httpx.AsyncClient) -> None:
    big = {"task": "send", "args": ["x" * (1024 * 1024)]}
    assert "1048576-byte limit" in error_of(await client.post("/v1/jobs", json=big), 413)


async def test_payload_over_the_core_limit_is_413(redis_url: str) -> None:
    forge = TaskForge(redis_url, prefix="web", max_payload_bytes=2048)
    async with client_for(create_app(forge, WebSettings())) as c:
        r = await c.post("/v1/jobs", json={"task": "send", "args": ["x" * 3000]})
        assert "over the 2048-byte limit" in error_of(r, 413)
    await forge.aclose()


async def test_batch_enqueue(client: httpx.AsyncClient) -> None:
    jobs = [{"task": "send", "args": [f"u{i}"]} for i in range(5)]
    jobs += [{"task": "send", "args": ["keyed"], "key": "k1"}, {"task": "slow", "args": [0]}]
    r = await client.post("/v1/jobs/batch", json={"jobs": jobs})
    assert r.status_code == 201, r.text
    items = r.json()["jobs"]
    assert len(items) == 7 and all(i["created"] for i in items)
    assert [i["queue"] for i in items] == ["emails"] * 6 + ["reports"]
    again = await client.post("/v1/jobs/batch", json={"jobs": [jobs[5]]})
    assert again.json()["jobs"][0] == {**items[5], "created": False}


async def test_batch_is_checked_before_anything_is_written(client: httpx.AsyncClient) -> None:
    jobs = [
        {"task": "send", "args": ["ok"]},
        {"task": "send", "delay": 1, "at": "2030-01-01T00:00:00Z"},
    ]
    assert "jobs[1]" in error_of(await client.post("/v1/jobs/batch", json={"jobs": jobs}), 422)
    assert (await client.get("/v1/queues")).json()["queues"] == []
    error_of(await client.post("/v1/jobs/batch", json={"jobs": []}), 422)
    error_of(await client.post("/v1/jobs/batch", json={"jobs": [{"task": "send"}] * 1001}), 422)


# -- one job ----------------------------------------------------------------------------------


async def test_job_lookup_errors(client: httpx.AsyncClient) -> None:
    assert "no job with id" in error_of(await client.get("/v1/jobs/01NOSUCHJOB"), 404)
    error_of(await client.get("/v1/jobs/bad-id!"), 422)
    job = (await client.post("/v1/jobs", json={"task": "send"})).json()
    error_of(await client.get(f"/v1/jobs/{job['id']}", params={"queue": "nope"}), 404)
    error_of(await client.get(f"/v1/jobs/{job['id']}", params={"queue": "{x}"}), 422)


async def test_cancel_waiting_job(client: httpx.AsyncClient) -> None:
    job = (await client.post("/v1/jobs", json={"task": "send"})).json()
    r = await client.delete(f"/v1/jobs/{job['id']}")
    assert r.json() == {
        "id": job["id"],
        "queue": "emails",
        "status": "canceled",
        "cancel_requested": False,
    }
    assert "already canceled" in error_of(await client.delete(f"/v1/jobs/{job['id']}"), 409)
    error_of(await client.delete("/v1/jobs/01NOSUCHJOB"), 404)


async def test_cancel_running_job_and_see_it_in_workers(
    forge: TaskForge, client: httpx.AsyncClient
) -> None:
    async with running_worker(forge, ["reports"], registry_seconds=0.2) as worker:
        job = (await client.post("/v1/jobs", json={"task": "slow", "args": [30]})).json()

        async def running() -> Any:
            workers = (await client.get("/v1/workers")).json()["workers"]
            return [w for w in workers if any(j["id"] == job["id"] for j in w["jobs"])]

        (shown,) = await poll(running, 15, "the worker to show its job")
        assert shown["id"] == worker.worker_id and shown["queues"] == ["reports"]
        (current,) = shown["jobs"]
        assert current["task"] == "slow" and current["queue"] == "reports"
        r = await client.delete(f"/v1/jobs/{job['id']}")
        assert r.json()["cancel_requested"] is True and r.json()["status"] == "active"

        async def canceled() -> bool:
            return (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "canceled"

        await poll(canceled, 15, "the running job to be canceled")


# -- queues -----------------------------------------------------------------------------------


async def test_queues_listing_and_paging(forge: TaskForge, client: httpx.AsyncClient) -> None:
    ids = [
        (await client.post("/v1/jobs", json={"task": "send", "args": [i]})).json()["id"]
        for i in range(5)
    ]
    await client.post("/v1/jobs", json={"task": "slow", "args": [0], "delay": 300})
    (emails, reports) = (await client.get("/v1/queues")).json()["queues"]
    assert emails["queue"] == "emails" and emails["counts"]["queued"] == 5
    assert emails["oldest_waiting_seconds"] is not None and emails["paused"] is False
    assert reports["counts"]["scheduled"] == 1 and reports["oldest_waiting_seconds"] is None
    assert emails["counters"]["enqueued"] == 5 and emails["completed_last_minute"] == 0
    one = (await client.get("/v1/queues/emails")).json()
    assert one.pop("oldest_waiting_seconds") >= emails.pop("oldest_waiting_seconds")
    assert one == emails
    error_of(await client.get("/v1/queues/nope"), 404)
    error_of(await client.get("/v1/queues/{bad}"), 422)

    seen, cursor, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"state": "queued", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/queues/emails/jobs", params=params)).json()
        assert page["total"] == 5
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and pages == 3
    scheduled = (await client.get("/v1/queues/reports/jobs", params={"state": "scheduled"})).json()
    assert len(scheduled["jobs"]) == 1 and scheduled["next_cursor"] is None
    for bad in (
        {"state": "nope"},
        {"limit": 0},
        {"limit": 1001},
        {"cursor": "abc"},
        {"limit": "x"},
    ):
        error_of(await client.get("/v1/queues/emails/jobs", params=bad), 422)
    error_of(await client.get("/v1/queues/nope/jobs"), 404)


async def test_pause_resume_purge(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await client.post("/v1/jobs", json={"task": "send", "args": [i]})
    assert (await client.post("/v1/queues/emails/pause")).json() == {
        "queue": "emails",
        "paused": True,
    }
    assert (await client.get("/v1/queues/emails")).json()["paused"] is True
    assert (await client.post("/v1/queues/emails/resume")).json()["paused"] is False
    error_of(await client.post("/v1/queues/nope/pause"), 404)
    error_of(await client.post("/v1/queues/nope/resume"), 404)
    r = await client.post("/v1/queues/emails/purge", json={"state": "queued"})
    assert r.json() == {"queue": "emails", "state": "queued", "deleted": 3}
    assert (await client.get("/v1/queues/emails")).json()["counts"]["queued"] == 0
    assert "active" in error_of(
        await client.post("/v1/queues/emails/purge", json={"state": "active"}), 422
    )
    error_of(await client.post("/v1/queues/emails/purge"), 400)
    error_of(await client.post("/v1/queues/nope/purge", json={"state": "dead"}), 404)


# -- dead letters -----------------------------------------------------------------------------


async def make_dead(forge: TaskForge, client: httpx.AsyncClient, n: int) -> list[str]:
    ids = [
        (await client.post("/v1/jobs", json={"task": "bounce", "args": [f"u{i}"]})).json()["id"]
        for i in range(n)
    ]
    async with running_worker(forge, ["emails"]):

        async def all_dead() -> bool:
            return (await client.get("/v1/queues/emails")).json()["counts"]["dead"] == n

        await poll(all_dead, 15, f"{n} dead jobs")
    return ids


async def test_dead_letters_list_and_requeue_one(
    forge: TaskForge, client: httpx.AsyncClient
) -> None:
    ids = await make_dead(forge, client, 3)
    page = (await client.get("/v1/dead")).json()
    assert page["total"] == 3 and {j["id"] for j in page["jobs"]} == set(ids)
    dead = page["jobs"][0]
    assert dead["status"] == "dead" and dead["error"]["type"] == "ValueError"
    assert "mailbox" in dead["error"]["message"] and "Traceback" in dead["error"]["traceback"]
    first = (await client.get("/v1/dead", params={"limit": 2})).json()
    rest = (
        await client.get("/v1/dead", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert first["next_cursor"] == "emails~2" and rest["next_cursor"] is None
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == [j["id"] for j in page["jobs"]]
    assert (await client.get("/v1/dead", params={"task": "send"})).json()["jobs"] == []
    assert (
        len(
            (await client.get("/v1/dead", params={"queue": "emails", "task": "bounce"})).json()[
                "jobs"
            ]
        )
        == 3
    )
    error_of(await client.get("/v1/dead", params={"queue": "nope"}), 404)
    error_of(await client.get("/v1/dead", params={"cursor": "nocursor"}), 422)

    r = await client.post(f"/v1/dead/{ids[0]}/requeue")
    assert r.json() == {"requeued": 1}
    job = (await client.get(f"/v1/jobs/{ids[0]}")).json()
    assert job["status"] == "queued" and job["attempt"] == 0
    counts = (await client.get("/v1/queues/emails")).json()["counts"]
    assert (counts["dead"], counts["queued"]) == (2, 1)
    assert "not dead" in error_of(await client.post(f"/v1/dead/{ids[0]}/requeue"), 409)
    error_of(await client.post("/v1/dead/01NOSUCHJOB/requeue"), 404)

    assert (await client.delete(f"/v1/dead/{ids[1]}")).json() == {"deleted": 1}
    error_of(await client.get(f"/v1/jobs/{ids[1]}"), 404)
    assert "not dead" in error_of(await client.delete(f"/v1/dead/{ids[0]}"), 409)
    error_of(await client.delete("/v1/dead/01NOSUCHJOB"), 404)


async def test_dead_letters_requeue_and_purge_many(
    forge: TaskForge, client: httpx.AsyncClient
) -> None:
    ids = await make_dead(forge, client, 5)
    r = await client.post("/v1/dead/requeue", json={"ids": ids[:2]})
    assert r.json() == {"requeued": 2}
    r = await client.post("/v1/dead/requeue", json={"task": "send"})
    assert r.json() == {"requeued": 0}
    r = await client.post("/v1/dead/purge", json={"ids": [ids[2]], "task": "bounce"})
    assert r.json() == {"deleted": 1}
    r = await client.post("/v1/dead/requeue", json={"queue": "emails", "task": "bounce"})
    assert r.json() == {"requeued": 2}
    assert (await client.get("/v1/queues/emails")).json()["counts"] == {
        "queued": 4, "scheduled": 0, "active": 0, "dead": 0, "completed": 0,
    }  # fmt: skip
    await client.post("/v1/queues/emails/purge", json={"state": "queued"})
    await make_dead(forge, client, 2)
    assert (await client.post("/v1/dead/requeue", json={})).json() == {"requeued": 2}
    await client.post("/v1/queues/emails/purge", json={"state": "queued"})
    await make_dead(forge, client, 2)
    assert (await client.post("/v1/dead/purge", json={"queue": "emails"})).json() == {"deleted": 2}
    error_of(await client.post("/v1/dead/requeue", json={"queue": "nope"}), 404)
    error_of(await client.post("/v1/dead/requeue", json={"ids": ["bad id"]}), 422)
    error_of(
        await client.post(
            "/v1/dead/purge", content=b"nope", headers={"content-type": "application/json"}
        ),
        400,
    )


# -- workers, throughput ----------------------------------------------------------------------


async def test_workers_and_throughput(forge: TaskForge, client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/workers")).json() == {"workers": []}
    await client.post(
        "/v1/jobs/batch", json={"jobs": [{"task": "send", "args": [i]} for i in range(4)]}
    )
    async with running_worker(forge, ["emails", "reports"]) as worker:

        async def done() -> bool:
            return (await client.get("/v1/queues/emails")).json()["counts"]["completed"] == 4

        await poll(done, 15, "4 completions")
        (w,) = (await client.get("/v1/workers")).json()["workers"]
        assert w["id"] == worker.worker_id and w["queues"] == ["emails", "reports"]
        assert w["concurrency"] == 4 and w["jobs"] == []
    t = (await client.get("/v1/throughput", params={"window": 60, "step": 10})).json()
    assert len(t["total"]["completed"]) == 6 and sum(t["total"]["completed"]) == 4
    assert [s["queue"] for s in t["queues"]] == ["emails", "reports"]
    assert (await client.get("/v1/queues/emails")).json()["completed_last_minute"] == 4
    one = (await client.get("/v1/throughput", params={"queue": "emails"})).json()
    assert len(one["queues"]) == 1 and len(one["total"]["completed"]) == 60
    wide = (await client.get("/v1/throughput", params={"window": 10, "step": 60})).json()
    assert wide["step_seconds"] == 10 and len(wide["total"]["completed"]) == 1
    fine = (await client.get("/v1/throughput", params={"window": 86400, "step": 1})).json()
    assert fine["step_seconds"] == 120 and len(fine["total"]["completed"]) == 720
    error_of(await client.get("/v1/throughput", params={"window": 5}), 422)
    error_of(await client.get("/v1/throughput", params={"queue": "nope"}), 404)


async def test_metrics_endpoint(client: httpx.AsyncClient) -> None:
    await client.post("/v1/jobs", json={"task": "send"})
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'taskforge_jobs_enqueued_total{queue="emails",task="send"} 1.0' in r.text
    assert 'taskforge_queue_jobs{queue="emails",state="queued"} 1.0' in r.text


# -- events -----------------------------------------------------------------------------------


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """The app on uvicorn in a thread, on a free port (streaming needs a real server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "uvicorn to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def read_events(lines: Iterator[str], until: Any) -> list[tuple[str, Any]]:
    """Server-sent events from ``lines`` until ``until(events so far)`` holds."""
    import json

    events: list[tuple[str, Any]] = []
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name:
            events.append((name, json.loads(line[6:])))
            if until(events):
                return events
    return events


def test_events_stream(redis_url: str) -> None:
    server_forge = make_forge(redis_url)
    producer = make_forge(redis_url)
    try:
        with live_server(create_app(server_forge, WebSettings(heartbeat_seconds=0.2))) as base:
            with httpx.stream(
                "GET", f"{base}/v1/events", params={"queue": "emails", "timeout": 20}, timeout=30
            ) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                lines = r.iter_lines()
                got = read_events(lines, lambda e: e[-1][0] == "ready")
                assert got == [("ready", {"queues": ["emails"], "job": None})]
                other = producer.enqueue("slow", 0)  # another queue: filtered out
                job = producer.enqueue("send", "x")
                got = read_events(lines, lambda e: e[-1][0] == "job")
                assert [e[1]["id"] for e in got] == [job.id] and got[0][1]["event"] == "enqueued"
                assert got[0][1]["queue"] == "emails" and got[0][1]["task"] == "send"
                assert other.id != job.id
            target = producer.enqueue("send", "y")
            params: dict[str, Any] = {"job": target.id, "timeout": 1}
            with httpx.stream("GET", f"{base}/v1/events", params=params, timeout=30) as r:
                lines = r.iter_lines()
                read_events(lines, lambda e: e[-1][0] == "ready")
                producer.enqueue("send", "z")
                target.cancel()
                got = read_events(lines, lambda e: e[-1][0] == "end")
                assert [e[1].get("event") for e in got] == ["canceled", None]
                assert got[0][1]["id"] == target.id and got[-1] == ("end", {"reason": "timeout"})
            with httpx.Client(base_url=base) as c:
                error_of(c.get("/v1/events", params={"queue": "{bad}"}), 422)  # type: ignore[arg-type]
                error_of(c.get("/v1/events", params={"timeout": -1}), 422)  # type: ignore[arg-type]
    finally:
        server_forge.close()
        producer.close()


# -- auth, CSRF, hosts, dashboard -------------------------------------------------------------


async def test_token_is_required_everywhere_but_health(forge: TaskForge) -> None:
    app = create_app(forge, WebSettings(token=TOKEN))
    spec = None
    async with client_for(app) as c:
        for op in operations():
            path = op.path.format(job_id="01ABC", queue="emails")
            r = await c.request(op.method, path)
            if op.auth:
                assert "token" in error_of(r, 401), op.name
                assert r.headers["www-authenticate"] == "Bearer"
                wrong = await c.request(op.method, path, headers={"Authorization": "Bearer nope"})
                assert error_of(wrong, 401) == "wrong token"
                basic = await c.request(
                    op.method, path, headers={"Authorization": f"Basic {TOKEN}"}
                )
                error_of(basic, 401)
            else:
                assert r.status_code == 200, op.name
        spec = (await c.get("/openapi.json")).json()
    assert spec["paths"]["/v1/jobs"]["post"]["security"] == [{"bearer": []}]
    async with client_for(app, Authorization=f"Bearer {TOKEN}") as c:
        assert (await c.post("/v1/jobs", json={"task": "send"})).status_code == 201
        assert (await c.get("/v1/queues")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200


def test_short_tokens_are_refused() -> None:
    with pytest.raises(Exception, match="at least 16"):
        WebSettings(token="short")


async def test_csrf_protection_of_browser_requests(forge: TaskForge) -> None:
    app = create_app(forge, WebSettings())
    csrf = app.state.csrf
    async with client_for(app) as c:
        page = await c.get("/")
        assert page.status_code == 200 and f'content="{csrf}"' in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert (await c.get("/static/app.js")).status_code == 200
        body = {"task": "send"}
        evil = {"Origin": "http://evil.example"}
        assert "cross-origin" in error_of(await c.post("/v1/jobs", json=body, headers=evil), 403)
        site = {"Sec-Fetch-Site": "cross-site"}
        assert "cross-site" in error_of(await c.post("/v1/jobs", json=body, headers=site), 403)
        same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        assert "CSRF" in error_of(await c.post("/v1/jobs", json=body, headers=same), 403)
        bad = {**same, CSRF_HEADER: "guess"}
        error_of(await c.post("/v1/jobs", json=body, headers=bad), 403)
        ok = await c.post("/v1/jobs", json=body, headers={**same, CSRF_HEADER: csrf})
        assert ok.status_code == 201
        # Reads are not state changes; scripts and curl (no Origin) need no CSRF token.
        assert (await c.get("/v1/queues", headers=evil)).status_code == 200
        assert (await c.post("/v1/jobs", json=body)).status_code == 201


async def test_allowed_hosts_guard_against_dns_rebinding(forge: TaskForge) -> None:
    app = create_app(forge, WebSettings(allowed_hosts=("127.0.0.1", "localhost")))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080"
    ) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/healthz", headers={"Host": "localhost:9"})).status_code == 200
        assert "not allowed" in error_of(
            await c.get("/", headers={"Host": "evil.example:8080"}), 403
        )


@pytest.mark.parametrize(
    "op", [op for op in operations() if op.method == "GET"], ids=lambda op: op.name
)
async def test_unknown_query_parameters_are_refused(client: httpx.AsyncClient, op: Any) -> None:
    path = op.path.format(job_id="01ABC", queue="emails")
    assert "unknown query parameter" in error_of(
        await client.get(path, params={"stat": "dead"}), 422
    )
