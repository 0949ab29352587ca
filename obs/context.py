"""Request context: IDs and trace context taken from headers, and the batch being handled.

Header values come from clients, so everything here treats them as hostile: names match
case-insensitively, values lose control characters and are truncated, and a malformed
``traceparent`` is ignored rather than half-used.
"""

from __future__ import annotations

import re
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import AbstractSet, Any, Dict, Mapping, NamedTuple, Optional, Set, Tuple

from obs.signals import Field

MAX_ID_LENGTH = 128
"""Longest client-supplied ID kept in a log line; longer values are cut."""

CLIENT_REQUEST_ID_HEADER = "x-request-id"
TRACEPARENT_HEADER = "traceparent"

_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}\Z")
"""The usual header: version 00, nothing after the flags."""
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16


def clean_value(value: Any, limit: int = MAX_ID_LENGTH) -> Optional[str]:
    """A header value made safe to log: text, no control characters, at most ``limit`` long."""
    if isinstance(value, str):
        if len(value) <= limit and value.isprintable():  # the usual case: nothing to clean
            return value.strip() or None
    elif isinstance(value, (bytes, bytearray)):
        value = bytes(value[: limit * 4]).decode("utf-8", "replace")
    else:
        return None
    cleaned = _CONTROL_CHARS.sub("", value[: limit * 4])[:limit].strip()
    return cleaned or None


def recover_utf8(value: Any) -> Any:
    """The client's UTF-8 header value, from the text TorchServe hands the handler.

    TorchServe's frontend (Netty) decodes header bytes as ISO-8859-1, so ``ü`` arrives as
    ``Ã¼``; encoding back to ISO-8859-1 gives the bytes the client sent. A value that is not
    such text (already proper Unicode, or bytes that are not UTF-8) is returned unchanged.
    """
    if not isinstance(value, str) or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def parse_traceparent(value: Any) -> Optional[Tuple[str, str]]:
    """``(trace_id, span_id)`` from a valid W3C traceparent, else ``None``.

    Invalid per the spec: upper-case hex, version ``ff``, all-zero IDs, and extra fields
    after a version ``00`` header.
    """
    if isinstance(value, str):  # the usual header, which has nothing to clean: match it as is
        match = _TRACEPARENT_00.match(value)
        if match is not None:
            return _nonzero(*match.groups())
    text = clean_value(value, limit=256)
    if text is None:
        return None
    match = _TRACEPARENT_00.match(text)
    if match is not None:
        return _nonzero(*match.groups())
    match = _TRACEPARENT.match(text)
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    return _nonzero(trace_id, span_id)


def _nonzero(trace_id: str, span_id: str) -> Optional[Tuple[str, str]]:
    """The IDs, unless either is all zeros (invalid per the spec)."""
    if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    return trace_id, span_id


_CLIENT_ID, _TRACE = 1, 2
_ROLES = {CLIENT_REQUEST_ID_HEADER: _CLIENT_ID, TRACEPARENT_HEADER: _TRACE}
_seen_names: Set[Any] = set()
"""Every header name as clients spell it. The same names come with every request, so each
spelling is lowercased once, not once per request, and names are matched by set operations
(in C) instead of a Python loop over every header."""
_id_names: Dict[Any, int] = {}
"""The spellings seen that carry an ID, and which."""
_MAX_HEADER_NAMES = 4096


def _learn_headers(names: AbstractSet[Any]) -> None:
    """Learn the spellings among one request's ``names`` not seen yet. If they would overflow
    the table (clients inventing names), it is emptied and all of ``names`` learned: the
    request being read needs its ID headers known, however often they came before."""
    unseen = names - _seen_names
    if len(_seen_names) + len(unseen) > _MAX_HEADER_NAMES:
        _seen_names.clear()
        _id_names.clear()
        unseen = set(names)
    for name in unseen:
        role = _ROLES.get(name.lower(), 0) if isinstance(name, str) else 0
        if role:
            _id_names[name] = role
    _seen_names.update(unseen)


class RequestIds(NamedTuple):
    """How one request is known: to TorchServe, to the client and to its tracer."""

    request_id: Optional[str]
    client_request_id: Optional[str] = None
    trace_id: Optional[str] = None
    span_id: Optional[str] = None

    @classmethod
    def from_headers(cls, request_id: Any, headers: Optional[Mapping[str, Any]]) -> RequestIds:
        """The IDs of one request; header names match whatever case the client sent."""
        client_request_id = traceparent = None
        if headers:
            names = headers.keys()
            if not names <= _seen_names:
                _learn_headers(names)
            for name, role in _id_names.items():
                value = headers.get(name)
                if value is None:
                    continue
                if role == _CLIENT_ID:
                    client_request_id = value
                else:
                    traceparent = value
        trace = parse_traceparent(traceparent) if traceparent is not None else None
        return tuple.__new__(  # the NamedTuple's __new__ without its Python frame
            cls,
            (
                clean_value(request_id),
                clean_value(recover_utf8(client_request_id)),
                trace[0] if trace else None,
                trace[1] if trace else None,
            ),
        )


ID_FIELDS = (Field.REQUEST_ID, Field.CLIENT_REQUEST_ID, Field.TRACE_ID, Field.SPAN_ID)
"""Log field of each :class:`RequestIds` member, in member order."""

_NO_BATCH: Mapping[str, Any] = MappingProxyType({})
_batch_fields: ContextVar[Mapping[str, Any]] = ContextVar("tsobs_batch_fields", default=_NO_BATCH)


def bind_batch(fields: Mapping[str, Any]) -> Token:
    """Make ``fields`` part of every log line emitted until :func:`reset_batch`."""
    return _batch_fields.set(fields)


def reset_batch(token: Token) -> None:
    _batch_fields.reset(token)


def batch_fields() -> Mapping[str, Any]:
    """Fields of the batch being handled in this thread/task (empty outside a batch)."""
    return _batch_fields.get()


def add_batch_context(_logger: Any, _method: str, event: Dict[str, Any]) -> Dict[str, Any]:
    """structlog processor: merge the current batch's fields (explicit fields win)."""
    for key, value in _batch_fields.get().items():
        event.setdefault(key, value)
    return event
