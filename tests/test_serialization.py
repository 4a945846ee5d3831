"""The wire format (pure): payloads, results and errors as JSON; what cannot travel is refused
with an error naming it, and nothing is silently changed into something else."""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import uuid
from collections import OrderedDict
from typing import Any, NamedTuple

import pytest

from taskforge import PayloadTooLarge, SerializationError, ValidationError
from taskforge.serialization import (
    decode_error,
    decode_payload,
    decode_value,
    encode_error,
    encode_payload,
    encode_value,
)


class Color(enum.StrEnum):
    RED = "red"


class Size(enum.IntEnum):
    LARGE = 3


class Pair(NamedTuple):
    a: int
    b: int


def test_payload_round_trip() -> None:
    args = (1, -2.5, "é", None, True, [1, [2, {"x": []}]], {"nested": {"k": [None]}})
    data = encode_payload(args, {"flag": False, "n": 2**70}, 1024 * 1024)
    assert json.loads(data) == {
        "args": [1, -2.5, "é", None, True, [1, [2, {"x": []}]], {"nested": {"k": [None]}}],
        "kwargs": {"flag": False, "n": 2**70},
    }
    assert decode_payload(data) == (list(json.loads(data)["args"]), {"flag": False, "n": 2**70})


def test_json_compatible_subclasses_travel_as_their_json_value() -> None:
    data = encode_payload((Color.RED, Size.LARGE, Pair(1, 2), OrderedDict(a=1)), {}, 1024 * 1024)
    assert decode_payload(data) == (["red", 3, [1, 2], {"a": 1}], {})


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (object(), "object"),
        (1j, "complex"),
        (ValueError("x"), "ValueError"),
        (b"bytes", "bytes"),
        ({1, 2}, "set"),
        (frozenset(), "frozenset"),
        (datetime.datetime(2026, 1, 1), "datetime"),
        (datetime.date(2026, 1, 1), "date"),
        (uuid.UUID(int=1), "UUID"),
        (decimal.Decimal("1.5"), "Decimal"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        ({1: "int key"}, "key"),
        ({("t",): 1}, "key"),
    ],
)
def test_values_json_cannot_carry_faithfully_are_refused(value: Any, named: str) -> None:
    """Anything that would arrive as something else (bytes as base64 text, a set as a list, NaN
    as null, an int key as a string) is refused before anything is written."""
    with pytest.raises(SerializationError, match=named) as err:
        encode_payload(("ok", {"deep": [value]}), {}, 1024 * 1024)
    assert isinstance(err.value, ValidationError)
    assert "args[1]['deep'][0]" in str(err.value) or "key" in str(err.value)
    with pytest.raises(SerializationError, match=named):
        encode_payload((), {"v": value}, 1024 * 1024)
    with pytest.raises(SerializationError, match="result"):
        encode_value({"v": value})


def test_too_deep_nesting_is_a_serialization_error() -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(SerializationError):
        encode_payload((deep,), {}, 10 * 1024 * 1024)


def test_payload_size_limit_is_exact() -> None:
    # {"args":["xxx..."],"kwargs":{}} is 25 bytes plus the string.
    assert len(encode_payload(("x" * 999,), {}, 1024)) == 1024
    with pytest.raises(PayloadTooLarge, match="1025 bytes, over the 1024-byte limit"):
        encode_payload(("x" * 1000,), {}, 1024)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'"text"', "JSON object"),
        (b'{"args": 1}', "'args' must be a list"),
        (b'{"kwargs": []}', "'kwargs' an object"),
    ],
)
def test_decode_payload_rejects_damage(data: bytes, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        decode_payload(data)


def test_decode_payload_defaults_missing_parts() -> None:
    assert decode_payload(b"{}") == ([], {})


def test_values_round_trip_and_none_is_empty() -> None:
    for value in (0, "s", [1, {"a": None}], {"x": 1.5}, False):
        assert decode_value(encode_value(value)) == value
    assert decode_value(None) is None and decode_value(b"") is None
    with pytest.raises(SerializationError, match="stored result"):
        decode_value(b"{oops")


def test_errors_carry_type_message_and_traceback() -> None:
    def fail() -> None:
        raise KeyError("missing")

    try:
        fail()
    except KeyError as exc:
        error = json.loads(encode_error(exc))
    assert error["type"] == "KeyError"
    assert error["message"] == "'missing'"
    assert error["traceback"].startswith("Traceback (most recent call last)")
    assert "in fail" in error["traceback"]
    assert json.loads(encode_error(KeyError("k"), with_traceback=False))["traceback"] == ""


def test_errors_that_cannot_print_themselves() -> None:
    class NoStr(Exception):
        def __str__(self) -> str:
            raise RuntimeError("broken")

    class Nothing(Exception):
        def __str__(self) -> str:
            raise RuntimeError("broken")

        def __repr__(self) -> str:
            raise RuntimeError("broken too")

    class Empty(Exception):
        pass

    assert json.loads(encode_error(NoStr(1)))["message"] == "NoStr(1)"
    assert json.loads(encode_error(Nothing()))["message"].endswith(".Nothing object>")
    assert json.loads(encode_error(Empty()))["message"] == "Empty()", "never an empty message"
    huge = json.loads(encode_error(ValueError("x" * 100_000)))
    assert len(huge["message"]) == 8192


def test_decode_error_tolerates_anything() -> None:
    assert decode_error(None) is None and decode_error(b"") is None
    assert decode_error(b"plain") == {"type": "Error", "message": "plain", "traceback": ""}
    assert decode_error(b"[1]") == {"type": "Error", "message": "[1]", "traceback": ""}
    assert decode_error(b'{"type": "X", "message": "m", "traceback": "t"}') == {
        "type": "X",
        "message": "m",
        "traceback": "t",
    }
