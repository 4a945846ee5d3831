"""The only place where payloads, results and errors are encoded. JSON on the wire (msgspec).

Wire format version 1: a job's ``payload`` field holds ``{"args": [...], "kwargs": {...}}``; its
``result`` field holds the JSON of the return value; ``error`` holds
``{"type": str, "message": str, "traceback": str}``. No pickle: decoding never runs code.
"""

from __future__ import annotations

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


def _describe(exc: Exception) -> str:
    text = str(exc)
    # msgspec says "Encoding objects of type X is unsupported"; name the fix too.
    return (
        f"{text}. Pass only JSON types (str, int, float, bool, None, list, dict) or convert first"
    )


def encode_payload(args: Sequence[Any], kwargs: Mapping[str, Any], max_bytes: int) -> bytes:
    """Encode task arguments; raises before anything is written to Redis."""
    try:
        data = _encoder.encode({"args": list(args), "kwargs": dict(kwargs)})
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
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
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
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
