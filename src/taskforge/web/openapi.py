"""The operations of the HTTP API as data, and the OpenAPI 3.1 document generated from them.

Each ``Operation`` names its handler, its request body, query and path parameters and its
responses as msgspec types; the app routes and validates with the same objects (``app.py``), so
what the spec promises is what the server checks.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .models import ErrorBody

__all__ = ["ERROR_STATUSES", "Operation", "build_spec", "query_fields"]

ERROR_STATUSES = {
    400: "Malformed request (not JSON, bad cursor)",
    401: "Missing or wrong bearer token",
    403: "Refused: cross-site request without the CSRF token, or a host not allowed",
    404: "No such job, queue or route",
    405: "Method not allowed",
    409: "The job is not in a state that allows this",
    413: "Request body over the size limit",
    415: "The body must be application/json",
    422: "Well-formed JSON that is not acceptable (types, ranges, unknown fields)",
    503: "Redis is not reachable",
}


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    """Starlette-style path: ``/v1/jobs/{job_id}``."""
    name: str
    """The operationId, also the route name."""
    summary: str
    tag: str
    handler: Callable[..., Awaitable[Any]]
    responses: dict[int, Any]
    """Status -> response struct type (or ``str`` with a media type in ``media``)."""
    body: type[msgspec.Struct] | None = None
    query: type[msgspec.Struct] | None = None
    path_params: dict[str, Any] = field(default_factory=dict)
    auth: bool = True
    media: str = "application/json"
    """Media type of the success response."""
    description: str = ""
    in_spec: bool = True


def _non_null(tp: Any) -> Any:
    """``X | None`` -> ``X`` (a query parameter is absent rather than null)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        return typing.Union[tuple(args)]  # noqa: UP007 - built from a tuple at runtime
    return tp


def query_fields(query: type[msgspec.Struct]) -> list[tuple[str, Any, bool, bool]]:
    """(name, type without None, required, is a list) for each field of a query struct."""
    out = []
    for info in msgspec.structs.fields(query):
        tp = _non_null(info.type)
        base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
        is_list = typing.get_origin(base) is list
        required = info.required
        out.append((info.encode_name, tp, required, is_list))
    return out


def _inline_schema(tp: Any) -> dict[str, Any]:
    schema = msgspec.json.schema(tp)
    schema.pop("$defs", None)
    return schema


def build_spec(
    operations: list[Operation], *, title: str, version: str, auth: bool
) -> dict[str, Any]:
    """The OpenAPI document; ``auth``: whether the server requires a bearer token."""
    models: list[Any] = [ErrorBody]
    for op in operations:
        if op.body is not None:
            models.append(op.body)
        models += [t for t in op.responses.values() if isinstance(t, type) and t is not str]
    unique = list(dict.fromkeys(models))
    _, components = msgspec.json.schema_components(
        unique, ref_template="#/components/schemas/{name}"
    )
    for model in unique:
        extra = getattr(model, "__schema_extra__", None)
        if extra and model.__name__ in components:
            components[model.__name__].update(extra)

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        if not op.in_spec:
            continue
        parameters: list[dict[str, Any]] = []
        for name, tp in op.path_params.items():
            parameters.append(
                {"name": name, "in": "path", "required": True, "schema": _inline_schema(tp)}
            )
        if op.query is not None:
            for name, tp, required, is_list in query_fields(op.query):
                param: dict[str, Any] = {
                    "name": name,
                    "in": "query",
                    "required": required,
                    "schema": _inline_schema(tp),
                }
                if is_list:
                    param.update(style="form", explode=True)
                parameters.append(param)
        responses: dict[str, Any] = {}
        for status, model in op.responses.items():
            if model is None:
                responses[str(status)] = {"description": "No content"}
            elif model is str:
                responses[str(status)] = {
                    "description": "OK",
                    "content": {op.media: {"schema": {"type": "string"}}},
                }
            else:
                responses[str(status)] = {
                    "description": (model.__doc__ or model.__name__).strip().splitlines()[0],
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    },
                }
        error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for status, text in ERROR_STATUSES.items():
            if status == 401 and not (op.auth and auth):
                continue
            if status in (413, 415) and op.body is None:
                continue
            responses.setdefault(str(status), {"description": text, "content": error_ref})
        entry: dict[str, Any] = {
            "operationId": op.name,
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": parameters,
            "responses": responses,
        }
        if op.description:
            entry["description"] = op.description
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}
                    }
                },
            }
        entry["security"] = [{"bearer": []}] if op.auth and auth else []
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Enqueue and inspect jobs, steer queues and dead letters, follow job events."
                " When the server has a token (TASKFORGE_API_TOKEN), send it as"
                " `Authorization: Bearer <token>`. Errors are JSON: {error, message}."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
