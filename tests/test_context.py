"""Request context from hostile headers: case, traceparent validity, injection, size."""

from __future__ import annotations

import pytest

from obs.context import (
    MAX_ID_LENGTH,
    RequestIds,
    batch_fields,
    bind_batch,
    clean_value,
    parse_traceparent,
    recover_utf8,
    reset_batch,
)
from obs.logs import render

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("name", ["X-Request-ID", "x-request-id", "X-REQUEST-ID", "x-Request-Id"])
def test_client_request_id_is_found_whatever_the_case(name: str) -> None:
    ids = RequestIds.from_headers(
        "ts-1", {name: "abc-123", "body": {"content-type": "application/json"}}
    )
    assert ids.request_id == "ts-1"
    assert ids.client_request_id == "abc-123"


def test_traceparent_header_case_insensitive_and_parsed() -> None:
    ids = RequestIds.from_headers("ts-1", {"TraceParent": VALID})
    assert (ids.trace_id, ids.span_id) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


@pytest.mark.parametrize(
    "value",
    [
        VALID.upper(),  # upper-case hex is invalid
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        VALID + "-extra",  # version 00 has exactly four fields
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "garbage",
        "",
        None,
        12,
    ],
)
def test_invalid_traceparent_is_ignored(value: object) -> None:
    assert parse_traceparent(value) is None
    ids = RequestIds.from_headers("ts-1", {"traceparent": value})
    assert ids.trace_id is None and ids.span_id is None


def test_future_traceparent_version_may_carry_more_fields() -> None:
    assert parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more") == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    )


def test_control_characters_are_removed_so_no_line_can_be_injected() -> None:
    hostile = 'abc\n{"event":"forged"}\r\x00\x1b[31m\u2028end'
    cleaned = clean_value(hostile)
    assert cleaned is not None
    assert not any(ch in cleaned for ch in "\n\r\x00\x1b\u2028")
    line = render({"client_request_id": cleaned})
    assert b"\n" not in line and line.count(b"{") == 2  # the forged object stays inside a string


def test_long_values_are_truncated() -> None:
    ids = RequestIds.from_headers("t" * 10_000, {"x-request-id": "x" * 10_240})
    assert ids.client_request_id == "x" * MAX_ID_LENGTH
    assert ids.request_id == "t" * MAX_ID_LENGTH


def test_non_ascii_is_kept_and_bytes_are_decoded() -> None:
    assert clean_value("requête-ü-日本") == "requête-ü-日本"
    assert clean_value("requête".encode()) == "requête"
    assert clean_value(b"\xff\xfebad") is not None  # invalid UTF-8 is replaced, not fatal


def test_missing_and_non_text_headers() -> None:
    assert RequestIds.from_headers("ts-1", None) == RequestIds("ts-1")
    assert RequestIds.from_headers(None, {"x-request-id": {"nested": 1}}).client_request_id is None
    assert clean_value("   ") is None


def test_batch_context_is_scoped() -> None:
    assert dict(batch_fields()) == {}
    token = bind_batch({"batch_id": "w1-1"})
    assert batch_fields()["batch_id"] == "w1-1"
    reset_batch(token)
    assert dict(batch_fields()) == {}


@pytest.mark.parametrize("sent", ["id-😀-ü-中", "ascii-only", "café"])
def test_utf8_header_values_survive_torchserves_latin1_decoding(sent: str) -> None:
    """TorchServe's frontend decodes header bytes as ISO-8859-1 and hands the handler that
    text: the client's UTF-8 value is recovered before it is cleaned."""
    as_handed = sent.encode("utf-8").decode("latin-1")
    ids = RequestIds.from_headers("ts-1", {"X-Request-ID": as_handed})
    assert ids.client_request_id == sent


def test_a_value_that_is_not_latin1_text_is_kept() -> None:
    assert recover_utf8("Ω-already-unicode") == "Ω-already-unicode"
    assert recover_utf8("\xff\xfe") == "\xff\xfe"  # not UTF-8 bytes: left as TorchServe gave it


def test_header_names_are_learned_once_and_never_grow_without_bound() -> None:
    from obs import context

    for i in range(context._MAX_HEADER_NAMES + 10):
        RequestIds.from_headers("ts-1", {f"X-Invented-{i}": "v"})
    assert len(context._seen_names) <= context._MAX_HEADER_NAMES
    ids = RequestIds.from_headers("ts-1", {"X-REQUEST-id": "abc", "TRACEPARENT": VALID})
    assert (ids.client_request_id, ids.span_id) == ("abc", "00f067aa0ba902b7")


def test_a_request_that_empties_the_name_table_keeps_its_ids() -> None:
    """The request whose new names overflow the table is read whole: the names it shares
    with earlier requests are learned again with its new ones, not forgotten with the rest."""
    from obs import context

    RequestIds.from_headers("ts-1", {"X-Request-ID": "warm", "traceparent": VALID})
    for i in range(context._MAX_HEADER_NAMES - len(context._seen_names)):
        RequestIds.from_headers("ts-1", {f"X-Filler-{i}": "v"})
    assert len(context._seen_names) == context._MAX_HEADER_NAMES
    headers = {"X-Request-ID": "kept", "traceparent": VALID, "X-Overflow": "v"}
    ids = RequestIds.from_headers("ts-2", headers)
    assert (ids.client_request_id, ids.span_id) == ("kept", "00f067aa0ba902b7")
    assert len(context._seen_names) <= context._MAX_HEADER_NAMES
