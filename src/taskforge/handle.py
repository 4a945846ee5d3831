"""``Job``: the handle on one job (status, result, cancellation), sync and asyncio."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import JobCanceled, JobDead, JobNotFound, TimeoutError
from .job import JobRecord, JobStatus
from .redis import operations as ops
from .redis.connection import BLOCK_SLICE_SECONDS
from .redis.driver import Flow
from .redis.keys import QueueKeys
from .redis.ops import command
from .serialization import decode_error, decode_value

if TYPE_CHECKING:
    from .client import TaskForge

__all__ = ["Job"]

R = TypeVar("R")


class Job(Generic[R]):
    """A handle on one job: its status, its result, and cancellation."""

    __slots__ = ("created", "forge", "id", "initial_status", "queue")

    def __init__(
        self,
        forge: TaskForge,
        job_id: str,
        queue: str,
        *,
        created: bool = True,
        initial_status: str | None = None,
    ) -> None:
        self.forge = forge
        self.id = job_id
        self.queue = queue
        self.created = created
        """False when enqueue found an existing job with the same idempotency key."""
        self.initial_status = initial_status

    def __repr__(self) -> str:
        return f"<Job {self.id} queue={self.queue}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and (other.id, other.queue) == (self.id, self.queue)

    def __hash__(self) -> int:
        return hash((self.id, self.queue))

    @property
    def _keys(self) -> QueueKeys:
        return self.forge.keys(self.queue)

    def _info_flow(self) -> Flow[JobRecord]:
        fields = yield ops.job_fields(self._keys, self.id)
        if not fields:
            raise JobNotFound(
                f"job {self.id} not found in queue {self.queue!r}: never enqueued, or its"
                " retention period ended"
            )
        return JobRecord.from_hash(self.id, self.queue, fields)

    def info(self) -> JobRecord:
        """A snapshot of the whole job record."""
        return self.forge.run(self._info_flow())

    async def info_async(self) -> JobRecord:
        return await self.forge.run_async(self._info_flow())

    def _status_flow(self) -> Flow[JobStatus]:
        status = yield command("HGET", self._keys.job(self.id), "status")
        if status is None:
            raise JobNotFound(f"job {self.id} not found in queue {self.queue!r}")
        return JobStatus(status.decode())

    def status(self) -> JobStatus:
        return self.forge.run(self._status_flow())

    async def status_async(self) -> JobStatus:
        return await self.forge.run_async(self._status_flow())

    def _result_flow(self, timeout: float | None) -> Flow[R]:
        keys = self._keys
        deadline = None if timeout is None else time.monotonic() + timeout
        code, status, result, error = yield ops.watch(keys, self.id, register=True)
        while True:
            if code == ops.WATCH_MISSING:
                raise JobNotFound(f"job {self.id} not found in queue {self.queue!r}")
            if code == ops.WATCH_FINAL:
                return _outcome(self.id, status, result, error)  # type: ignore[no-any-return]
            if deadline is None:
                block = BLOCK_SLICE_SECONDS
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"job {self.id} is still {status} after {timeout} s; wait longer or"
                        " check its worker (`taskforge job ID`)"
                    )
                block = min(remaining, BLOCK_SLICE_SECONDS)
            yield command("BLPOP", keys.done(self.id), round(max(block, 0.01), 3), blocking=True)
            code, status, result, error = yield ops.watch(keys, self.id, register=False)

    def result(self, timeout: float | None = None) -> R:
        """Wait (blocking on Redis, no polling) for the result. Raises JobFailed subclasses."""
        return self.forge.run(self._result_flow(timeout))

    async def result_async(self, timeout: float | None = None) -> R:
        return await self.forge.run_async(self._result_flow(timeout))

    def _cancel_flow(self) -> Flow[bool]:
        s = self.forge.settings
        outcome, _status = yield ops.cancel(
            self._keys, self.id, round(s.completed_ttl * 1000), s.publish_events
        )
        if outcome == ops.CANCEL_MISSING:
            raise JobNotFound(f"job {self.id} not found in queue {self.queue!r}")
        return outcome in (ops.CANCEL_DONE, ops.CANCEL_REQUESTED)

    def cancel(self) -> bool:
        """Cancel a waiting job now, or ask a running one to stop. False if already final."""
        return self.forge.run(self._cancel_flow())

    async def cancel_async(self) -> bool:
        return await self.forge.run_async(self._cancel_flow())


def _outcome(job_id: str, status: str, result: bytes, error: bytes) -> Any:
    if status == JobStatus.COMPLETED:
        return decode_value(result)
    err = decode_error(error)
    if status == JobStatus.CANCELED:
        raise JobCanceled.from_error(job_id, status, err or {"type": "Canceled", "message": ""})
    raise JobDead.from_error(job_id, status, err)
