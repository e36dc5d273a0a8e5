"""CloudEvents 1.0 over HTTP (binary, structured and batch modes) to Segment-shaped messages.

The mapping (documented in docs/ingest.md):

- ``type`` → ``event`` (every CloudEvent becomes a ``track`` event)
- ``subject`` → ``userId``; extension ``anonymousid`` → ``anonymousId`` (one of them is required)
- ``data`` → ``properties`` (a JSON object as is; any other data under ``properties.data``)
- ``id`` → ``messageId``; ``time`` → ``timestamp``
- ``source``, ``specversion``, ``dataschema``, ``datacontenttype`` and every other extension →
  ``context.cloudevents``
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import msgspec

from cairn_ingest.segment import Problem, SegmentMessage, not_json
from cairn_ingest.storable import MAX_DEPTH, split_array

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_REQUIRED = ("id", "source", "type", "specversion")
_KNOWN = frozenset(
    ("id", "source", "type", "specversion", "subject", "time", "data", "data_base64")
)

_object = msgspec.json.Decoder(dict[str, Any])
_batch = msgspec.json.Decoder(list[msgspec.Raw])
_any = msgspec.json.Decoder()


def decode_batch(body: bytes) -> list[msgspec.Raw]:
    try:
        return _batch.decode(body)
    except RecursionError:  # one item nests too deep: split, so only that one is refused
        try:
            return [msgspec.Raw(item) for item in split_array(body, None)[0]]
        except ValueError:
            raise Problem("invalid_batch", f"JSON nests deeper than {MAX_DEPTH} levels") from None
    except msgspec.ValidationError:
        raise Problem("invalid_batch", "a CloudEvents batch must be a JSON array") from None
    except msgspec.DecodeError as exc:
        raise not_json(body, exc, "invalid_batch") from None


def from_structured(raw: bytes | msgspec.Raw) -> SegmentMessage:
    try:
        attributes = _object.decode(raw)
    except msgspec.ValidationError:
        raise Problem("invalid_event", "a structured CloudEvent must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise not_json(raw, exc, "invalid_event") from None
    if "data_base64" in attributes and "data" not in attributes:
        attributes["data"] = _data_from_base64(attributes)
    return to_message(attributes)


def from_binary(headers: Mapping[str, str], body: bytes, content_type: str) -> SegmentMessage:
    # Header values are percent-encoded (CloudEvents HTTP binding 3.1.3.2).
    attributes: dict[str, Any] = {
        name[3:].lower(): unquote(value)
        for name, value in headers.items()
        if name.lower().startswith("ce-")
    }
    attributes["datacontenttype"] = content_type or None
    if body:
        attributes["data"] = _decode_data(body, content_type)
    return to_message(attributes)


def _decode_data(body: bytes, content_type: str) -> Any:
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json") or not media:
        try:
            return _any.decode(body)
        except msgspec.DecodeError as exc:
            if media:
                raise Problem("malformed_json", f"data is not valid JSON: {exc}") from None
    if media.startswith("text/") or not media:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"data_base64": base64.b64encode(body).decode("ascii")}


def _data_from_base64(attributes: Mapping[str, Any]) -> Any:
    encoded = attributes["data_base64"]
    if not isinstance(encoded, str):
        raise Problem("invalid_event", "data_base64 must be a string")
    try:
        body = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Problem("invalid_event", "data_base64 is not valid base64") from None
    return _decode_data(body, str(attributes.get("datacontenttype") or "application/octet-stream"))


def _string(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise Problem("invalid_event", f"CloudEvents attribute {name} must be a non-empty string")
    return value


def to_message(attributes: Mapping[str, Any]) -> SegmentMessage:
    missing = [a for a in _REQUIRED if not attributes.get(a)]
    if missing:
        raise Problem("invalid_event", f"CloudEvents attribute(s) missing: {', '.join(missing)}")
    if attributes["specversion"] != "1.0":
        raise Problem(
            "invalid_event",
            f"specversion {attributes['specversion']!r} is not supported; use 1.0",
        )
    time = _string(attributes, "time")
    timestamp: datetime | None = None
    if time is not None:
        try:
            timestamp = msgspec.convert(time, datetime)
        except msgspec.ValidationError:
            raise Problem("invalid_event", f"time {time!r} is not an RFC 3339 timestamp") from None
    data = attributes.get("data")
    properties = data if isinstance(data, dict) else ({} if data is None else {"data": data})
    ce_context = {k: v for k, v in attributes.items() if k not in _KNOWN and v is not None}
    ce_context["source"] = attributes["source"]
    ce_context["specversion"] = attributes["specversion"]
    return SegmentMessage(
        type="track",
        event=_string(attributes, "type"),
        user_id=_string(attributes, "subject"),
        anonymous_id=_string(attributes, "anonymousid"),
        message_id=_string(attributes, "id"),
        timestamp=timestamp,
        properties=properties,
        context={"cloudevents": ce_context},
    )
