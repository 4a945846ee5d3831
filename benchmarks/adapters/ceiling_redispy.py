"""The bare redis-py + hiredis ceiling: how fast one Python process can push and pop at all.

No queue library, no job body, no acknowledgement: plain LPUSH / BRPOP / LMPOP on one list. And
the pickup floor: a consumer process blocked in BLPOP, a producer pushing its clock reading with
the latency phase's random gaps; push -> pop latency is what any queue's pickup is bounded by here.

    python ceiling_redispy.py URL COUNT SECONDS [SAMPLES]   # prints one JSON line of figures
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time

import redis

KEY = "ceiling:list"
LATENCY_KEY = "ceiling:latency"
BATCH = 100
# The same gaps as the pickup-latency phase of the adapters (_common.py).
LATENCY_GAP = (0.005, 0.020)


def _client(url: str) -> redis.Redis:
    # redis-py 8's default socket timeout is 5 s; a blocking pop needs its own, longer one.
    return redis.Redis.from_url(url, socket_timeout=30)


def push_single(r: redis.Redis, count: int, seconds: float) -> tuple[int, float]:
    deadline = time.monotonic() + seconds
    t0 = time.perf_counter()
    sent = 0
    while sent < count and time.monotonic() < deadline:
        r.lpush(KEY, b"x")
        sent += 1
    return sent, time.perf_counter() - t0


def push_pipelined(r: redis.Redis, count: int, seconds: float) -> tuple[int, float]:
    deadline = time.monotonic() + seconds
    t0 = time.perf_counter()
    sent = 0
    while sent < count and time.monotonic() < deadline:
        n = min(BATCH, count - sent)
        pipe = r.pipeline(transaction=False)
        for _ in range(n):
            pipe.lpush(KEY, b"x")
        pipe.execute()
        sent += n
    return sent, time.perf_counter() - t0


def pop_single(r: redis.Redis, count: int, seconds: float) -> tuple[int, float]:
    deadline = time.monotonic() + seconds
    t0 = time.perf_counter()
    got = 0
    while got < count and time.monotonic() < deadline:
        if r.brpop([KEY], timeout=1) is None:
            break
        got += 1
    return got, time.perf_counter() - t0


def pop_batched(r: redis.Redis, count: int, seconds: float) -> tuple[int, float]:
    deadline = time.monotonic() + seconds
    t0 = time.perf_counter()
    got = 0
    while got < count and time.monotonic() < deadline:
        reply = r.execute_command("LMPOP", 1, KEY, "RIGHT", "COUNT", BATCH)
        if reply is None:
            break
        got += len(reply[1])
    return got, time.perf_counter() - t0


def consumer(url: str, count: int, seconds: float) -> None:
    """End-to-end consumer: blocks for items, pops up to BATCH at a time, prints its end time."""
    r = _client(url)
    deadline = time.monotonic() + seconds
    got, last_ns, idle_since = 0, time.time_ns(), time.monotonic()
    while got < count and time.monotonic() < deadline:
        reply = r.execute_command("BLMPOP", 1, 1, KEY, "RIGHT", "COUNT", BATCH)
        if reply is not None:
            got += len(reply[1])
            last_ns, idle_since = time.time_ns(), time.monotonic()
        elif got and time.monotonic() - idle_since > 1.5:
            break  # the producer stopped early (its time ran out)
    print(json.dumps({"got": got, "end_ns": last_ns}), flush=True)


def latency_consumer(url: str) -> None:
    """Pops one item at a time and records (pop time - pushed time) until it pops b"stop"."""
    r = _client(url)
    while True:
        reply = r.blpop([KEY], timeout=0)
        now = time.time_ns()
        if reply is None or reply[1] == b"stop":
            return
        r.rpush(LATENCY_KEY, now - int(reply[1]))


def pickup_floor(r: redis.Redis, url: str, samples: int) -> dict[str, float]:
    r.delete(KEY, LATENCY_KEY)
    proc = subprocess.Popen([sys.executable, __file__, "latency-consumer", url])
    try:
        time.sleep(0.3)  # let the consumer connect and block
        for _ in range(samples):
            time.sleep(random.uniform(*LATENCY_GAP))
            r.lpush(KEY, time.time_ns())
        r.rpush(KEY, b"stop")
        proc.wait(timeout=30)
    finally:
        proc.kill()
    values = sorted(int(v) / 1e6 for v in r.lrange(LATENCY_KEY, 0, -1))
    r.delete(KEY, LATENCY_KEY)
    if len(values) < 2:
        return {}
    # The same percentiles as the benchmark's own latency phases (phases.py).
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"pickup_p50_ms": cuts[49], "pickup_p99_ms": cuts[98]}


def main() -> None:
    if sys.argv[1] == "consumer":
        consumer(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    if sys.argv[1] == "latency-consumer":
        latency_consumer(sys.argv[2])
        return
    url, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    samples = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    r = _client(url)
    r.delete(KEY)
    out: dict[str, float] = {}
    for name, push, pop in (
        ("single", push_single, pop_single),
        ("batched", push_pipelined, pop_batched),
    ):
        n, s = push(r, count, seconds)
        out[f"push_{name}"] = n / s
        n, s = pop(r, n, seconds)
        out[f"pop_{name}"] = n / s
        r.delete(KEY)
    # End to end: a consumer process pops (BLMPOP) while this one pushes (pipelined).
    proc = subprocess.Popen(
        [sys.executable, __file__, "consumer", url, str(count), str(seconds + 10)],
        stdout=subprocess.PIPE,
    )
    time.sleep(0.3)  # let the consumer connect and block
    t0 = time.time_ns()
    push_pipelined(r, count, seconds)
    stdout, _ = proc.communicate(timeout=seconds + 30)
    result = json.loads(stdout.decode().splitlines()[-1])
    out["end_to_end"] = result["got"] / max((result["end_ns"] - t0) / 1e9, 1e-9)
    r.delete(KEY)
    if samples:
        out.update(pickup_floor(r, url, samples))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
