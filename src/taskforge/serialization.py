"""The only place where payloads, results and errors are encoded. JSON on the wire (msgspec).

Wire format version 1: a job's ``payload`` field holds ``{"args": [...], "kwargs": {...}}``; its
``result`` field holds the JSON of the return value; ``error`` holds
``{"type": str, "message": str, "traceback": str}``. No pickle: decoding never runs code.
"""

from __future__ import annotations

import math
import traceback as tb
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from .errors import PayloadTooLarge, SerializationError

__all__ = [
    "WIRE_VERSION",
    "decode_error",
    "decode_payload",
    "decode_value",
    "encode_error",
    "encode_payload",
    "encode_value",
]

WIRE_VERSION = 1

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


_ADVICE = "Pass only JSON types (str, int, float, bool, None, list, dict) or convert first"
_MAX_DEPTH = 256
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)


def _describe(exc: Exception) -> str:
    # msgspec says "Encoding objects of type X is unsupported"; name the fix too.
    return f"{exc}. {_ADVICE}"


class _NotJSON(Exception):
    pass


def _check(value: Any, path: str, depth: int) -> None:
    """Refuse what JSON cannot carry faithfully. msgspec would send bytes as base64 text, sets as
    lists, datetimes, UUIDs and decimals as strings and NaN as null, and the task would receive
    something else than was enqueued without a word."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return
    if kind is float or isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJSON(f"{path} is {value!r}: JSON has no NaN or infinity")
        return
    if depth > _MAX_DEPTH:
        raise _NotJSON(f"{path} is nested deeper than {_MAX_DEPTH} levels")
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]", depth + 1)
        return
    if kind is dict or isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotJSON(
                    f"{path} has a key of type {type(key).__qualname__} ({key!r}): JSON object"
                    " keys are strings"
                )
            _check(item, f"{path}[{key!r}]", depth + 1)
        return
    if isinstance(value, str | int):  # str and int enums, and other subclasses
        return
    raise _NotJSON(f"{path} is of type {kind.__qualname__}, which JSON cannot carry")


def encode_payload(args: Sequence[Any], kwargs: Mapping[str, Any], max_bytes: int) -> bytes:
    """Encode task arguments; raises before anything is written to Redis."""
    try:
        _check(list(args), "args", 0)
        _check(dict(kwargs), "kwargs", 0)
    except _NotJSON as exc:
        raise SerializationError(
            f"task arguments are not JSON-serialisable: {exc}. {_ADVICE}"
        ) from None
    try:
        data = _encoder.encode({"args": list(args), "kwargs": dict(kwargs)})
    except _ENCODE_ERRORS as exc:
        raise SerializationError(
            f"task arguments are not JSON-serialisable: {_describe(exc)}"
        ) from exc
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"encoded payload is {len(data)} bytes, over the {max_bytes}-byte limit; store large"
            " data elsewhere and pass a reference, or raise max_payload_bytes"
        )
    return data


def decode_payload(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    try:
        obj = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SerializationError(f"stored payload is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise SerializationError("stored payload is not a JSON object with 'args' and 'kwargs'")
    args = obj.get("args", [])
    kwargs = obj.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise SerializationError("stored payload: 'args' must be a list and 'kwargs' an object")
    return args, kwargs


def encode_value(value: Any) -> bytes:
    try:
        _check(value, "result", 0)
    except _NotJSON as exc:
        raise SerializationError(
            f"task result is not JSON-serialisable: {exc}. {_ADVICE}"
        ) from None
    try:
        return _encoder.encode(value)
    except _ENCODE_ERRORS as exc:
        raise SerializationError(f"task result is not JSON-serialisable: {_describe(exc)}") from exc


def decode_value(data: bytes | None) -> Any:
    if data is None or data == b"":
        return None
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SerializationError(f"stored result is not valid JSON: {exc}") from exc


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return repr_or_type(exc)


def repr_or_type(obj: object) -> str:
    try:
        return repr(obj)
    except Exception:
        return f"<{type(obj).__qualname__} object>"


def encode_error(exc: BaseException, *, with_traceback: bool = True) -> bytes:
    """Describe an exception in JSON. Works for exceptions that cannot be pickled or printed."""
    message = _safe_str(exc)
    if not message:
        message = repr_or_type(exc)
    trace = ""
    if with_traceback:
        try:
            trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:
            trace = ""
    return _encoder.encode(
        {"type": type(exc).__qualname__, "message": message[:8192], "traceback": trace[-32768:]}
    )


def encode_error_fields(error_type: str, message: str) -> bytes:
    return _encoder.encode({"type": error_type, "message": message, "traceback": ""})


def decode_error(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        obj = _decoder.decode(data)
    except msgspec.DecodeError:
        return {"type": "Error", "message": data.decode("utf-8", "replace"), "traceback": ""}
    return obj if isinstance(obj, dict) else {"type": "Error", "message": str(obj), "traceback": ""}
