"""Property-based run of schemathesis against the app's own OpenAPI spec: generated requests,
valid and invalid, must never get a server error, and every response must match the spec."""

from __future__ import annotations

import time

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from taskforge.web import WebSettings, create_app
from taskforge.web.app import operations as app_operations
from tests.web.conftest import TOKEN, make_forge

EXAMPLES = 30  # per operation and mode: about 1,000 requests in ~10 s


def test_api_matches_its_spec(redis_url: str) -> None:
    forge = make_forge(redis_url)
    app = create_app(forge, WebSettings(token=TOKEN))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # A batch generated over its item limit can also be over the body limit: 413 (documented in
    # the spec) rejects it as well as 400 does.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    calls: dict[str, int] = {}
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    plain = {
        f"{op.method} {op.path}"
        for op in app_operations()
        if not op.path_params and op.query is None and op.body is None
    }
    for operation in operations:
        if operation.path == "/v1/events":
            continue  # an endless stream; tests/web/test_api.py covers it
        modes = [GenerationMode.POSITIVE]
        if operation.label not in plain:  # with nothing to get wrong, no negative case exists
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                if (
                    mode is GenerationMode.NEGATIVE  # noqa: B023 (run() runs in this pass)
                    and (case.headers or {}).get("Authorization") != headers["Authorization"]
                ):
                    # The real token replaces a mutated Authorization header, which may leave
                    # nothing invalid in the request; missing or wrong tokens have tests of
                    # their own (tests/web/test_api.py).
                    return
                case.call_and_validate(headers=headers)
                label = case.operation.label
                calls[label] = calls.get(label, 0) + 1

            run()
    print(
        f"schemathesis: {sum(calls.values())} requests over {len(calls)} operations"
        f" in {time.monotonic() - started:.1f} s"
    )
    assert len(calls) == len(operations) - 1
