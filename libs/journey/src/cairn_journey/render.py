"""Render Template documents with Liquid (python-liquid), and find their problems before sending.

A Template document names its channel and holds Liquid source in the fields that channel uses:

==========  =====================================================================
channel     fields (each a Liquid template)
==========  =====================================================================
email       ``subject`` (required), ``html`` and/or ``text`` (at least one),
            optional ``from``, ``reply_to``, ``preheader``
sms         ``body``
push        ``title``, ``body``, optional ``data`` (mapping of string templates),
            ``url``, ``image``, ``icon``
webhook     ``body`` (usually JSON), optional ``headers`` (mapping)
==========  =====================================================================

The fields may also sit under ``spec:`` (the document shape ``kind/name/spec``). Templates see three
names: ``profile`` (the profile's traits), ``event`` (the triggering event; ``event.matched`` holds
events matched by earlier ``wait_for`` steps, keyed by step id) and ``journey`` (``name``,
``version``, ``step``, ``instance_id``, ...). Other top-level names are reported by
:func:`template_problems`, which catches what can be found before a send: syntax errors, unknown
filters, unknown top-level variables, missing required fields.

Undefined variables: a send must never crash because one profile lacks a trait, so an undefined
variable renders as the empty string (Liquid's default, and what Braze and Customer.io do) and its
dotted path is listed in :attr:`Rendered.missing`; the dispatcher logs it and records it with the
delivery. Use ``{{ profile.first_name | default: "there" }}`` for a fallback. An email whose subject
renders empty, or an SMS/push whose body renders empty, is refused by :func:`render`
(:class:`RenderError`), because sending it would be worse than not sending.

HTML fields are rendered with auto-escaping (a trait holding ``<script>`` arrives as text); the
``raw`` filter is deliberately not offered, but ``| escape`` etc. work as usual.
"""

from __future__ import annotations

import contextvars
import functools
import html
import re
from collections.abc import Mapping
from typing import Any

import msgspec
from liquid import BoundTemplate, Environment, Undefined
from liquid.exceptions import LiquidError

__all__ = [
    "CHANNEL_FIELDS",
    "SCOPE_NAMES",
    "RenderError",
    "Rendered",
    "render",
    "template_problems",
]

SCOPE_NAMES = frozenset({"profile", "event", "journey"})

CHANNEL_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # channel: (required fields, optional fields); for email, html/text are "one of"
    "email": (("subject",), ("html", "text", "from", "reply_to", "preheader")),
    "sms": (("body",), ()),
    "push": (("title", "body"), ("data", "url", "image", "icon")),
    "webhook": (("body",), ("headers",)),
}
_MAPPING_FIELDS = frozenset({"data", "headers"})
LINK_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"']+)\2""", re.IGNORECASE)
"""An ``<a href="http(s)://...">`` in HTML: group 3 is the (HTML-escaped) target."""
_HTML_FIELDS = frozenset({"html"})
_LIQUID = re.compile(r"\{\{|\{%")

_missing: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "cairn_render_missing", default=None
)


class RenderError(Exception):
    """The template cannot produce a message (syntax error, a required field renders empty...)."""


class Rendered(msgspec.Struct, frozen=True, kw_only=True):
    """What a template produced for one profile. Fields a channel does not use stay ``None``."""

    channel: str
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    body: str | None = None
    title: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    reply_to: str | None = None
    preheader: str | None = None
    url: str | None = None
    image: str | None = None
    icon: str | None = None
    data: dict[str, str] = msgspec.field(default_factory=dict)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    missing: tuple[str, ...] = ()
    """Dotted paths of variables that were undefined and rendered empty."""
    literal_links: tuple[str, ...] = ()
    """The ``<a href>`` targets written literally in the template's HTML (no Liquid in them):
    the links its author chose, which email tracking may rewrite; links built from data are not
    among them (decision 0055)."""


class _RecordingUndefined(Undefined):
    """Renders as "" (and is falsy) like Liquid's default, but notes which path was missing."""

    __slots__ = ()

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        found = _missing.get()
        if found is not None:
            hint = kwargs.get("hint") or ""
            path = hint.removesuffix(" is undefined") if hint.endswith(" is undefined") else name
            if path not in found:
                found.append(path)


def _environment(autoescape: bool) -> Environment:
    env = Environment(undefined=_RecordingUndefined, autoescape=autoescape)
    env.filters.pop("raw", None)
    return env


_TEXT = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


def _fields(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = doc.get("spec")
    return spec if isinstance(spec, Mapping) else doc


def _channel(doc: Mapping[str, Any]) -> str | None:
    channel = doc.get("channel", _fields(doc).get("channel"))
    return channel if isinstance(channel, str) else None


def _sources(doc: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(path, field, source) of every Liquid source string in the document."""
    fields = _fields(doc)
    channel = _channel(doc) or ""
    required, optional = CHANNEL_FIELDS.get(channel, ((), ()))
    found: list[tuple[str, str, Any]] = []
    for name in (*required, *optional):
        if fields.get(name) is None:
            continue
        value = fields[name]
        if name in _MAPPING_FIELDS and isinstance(value, Mapping):
            found.extend((f"{name}.{key}", name, item) for key, item in value.items())
        else:
            found.append((name, name, value))
    return found


def template_problems(doc: Mapping[str, Any]) -> list[str]:
    """Everything wrong with a Template document that can be found without sending it.

    Each problem names the field (``html: unknown filter 'upcsae' at 1:14``); an empty list means
    the template can be published.
    """
    problems: list[str] = []
    channel = _channel(doc)
    if channel is None:
        return ["channel: required (one of email, sms, push, webhook)"]
    if channel not in CHANNEL_FIELDS:
        return [f"channel: unknown channel {channel!r} (one of {', '.join(CHANNEL_FIELDS)})"]
    fields = _fields(doc)
    required, _ = CHANNEL_FIELDS[channel]
    problems.extend(
        f"{name}: required for {channel} templates" for name in required if not fields.get(name)
    )
    if channel == "email" and not (fields.get("html") or fields.get("text")):
        problems.append("html: an email template needs html or text (or both)")
    problems.extend(
        f"{name}: must be a mapping of names to templates"
        for name in sorted(_MAPPING_FIELDS)
        if name in fields and not isinstance(fields[name], Mapping)
    )
    for path, field, source in _sources(doc):
        if field in _MAPPING_FIELDS and not isinstance(fields.get(field), Mapping):
            continue
        found = (
            _source_problems(source, field in _HTML_FIELDS)
            if isinstance(source, str)
            else [f"must be a string, not {type(source).__name__}"]
        )
        problems.extend(f"{path}: {p}" for p in found)
    return problems


def _source_problems(source: str, html: bool) -> list[str]:
    env = _HTML if html else _TEXT
    try:
        template = env.from_string(source)
    except LiquidError as exc:
        return [_describe(exc)]
    analysis = template.analyze()
    problems = [
        f"unknown filter {name!r}" + _where(source, spans[0].index if spans else None)
        for name, spans in analysis.filters.items()
        if name not in env.filters
    ]
    for name, variables in analysis.globals.items():
        if name not in SCOPE_NAMES:
            index = variables[0].span.index if variables else None
            problems.append(
                f"unknown variable {name!r}{_where(source, index)}"
                " (templates see profile, event and journey)"
            )
    return problems


def _where(source: str, index: int | None) -> str:
    if index is None:
        return ""
    line = source.count("\n", 0, index) + 1
    column = index - (source.rfind("\n", 0, index) + 1) + 1
    return f" at {line}:{column}"


def _describe(exc: LiquidError) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def render(template: Mapping[str, Any], scope: Mapping[str, Any]) -> Rendered:
    """Render a Template document for one profile.

    ``scope`` holds ``profile``, ``event`` and ``journey`` (missing ones are empty). Raises
    :class:`RenderError` when the template is broken or a field the channel cannot do without
    (email subject, SMS/push body) renders empty.
    """
    channel = _channel(template)
    if channel not in CHANNEL_FIELDS:
        raise RenderError(f"template has no valid channel (got {channel!r})")
    data = {name: scope.get(name) or {} for name in SCOPE_NAMES}
    missing: list[str] = []
    literal: set[str] = set()
    token = _missing.set(missing)
    try:
        values: dict[str, Any] = {}
        mappings: dict[str, dict[str, str]] = {"data": {}, "headers": {}}
        for path, field, source in _sources(template):
            if not isinstance(source, str) or (
                field in _MAPPING_FIELDS and not isinstance(_fields(template).get(field), Mapping)
            ):
                raise RenderError(f"{path}: not a template string")
            text = _render_one(path, source, field in _HTML_FIELDS, data)
            if field in _HTML_FIELDS:
                literal |= _literal_links(source)
            if field in _MAPPING_FIELDS:
                mappings[field][path.split(".", 1)[1]] = text
            else:
                values[field] = text
    finally:
        _missing.reset(token)
    _require_content(channel, values)
    return Rendered(
        channel=channel,
        subject=values.get("subject"),
        html=values.get("html"),
        text=values.get("text"),
        body=values.get("body"),
        title=values.get("title"),
        from_=values.get("from"),
        reply_to=values.get("reply_to"),
        preheader=values.get("preheader"),
        url=values.get("url"),
        image=values.get("image"),
        icon=values.get("icon"),
        data=mappings["data"],
        headers=mappings["headers"],
        missing=tuple(missing),
        literal_links=tuple(sorted(literal)),
    )


@functools.lru_cache(maxsize=1024)
def _literal_links(source: str) -> frozenset[str]:
    return frozenset(
        html.unescape(m[3]) for m in LINK_HREF.finditer(source) if not _LIQUID.search(m[3])
    )


@functools.lru_cache(maxsize=1024)
def _parse(source: str, html: bool) -> BoundTemplate:
    return (_HTML if html else _TEXT).from_string(source)


def _render_one(path: str, source: str, html: bool, data: Mapping[str, Any]) -> str:
    try:
        return str(_parse(source, html).render(**data))
    except LiquidError as exc:
        raise RenderError(f"{path}: {_describe(exc)}") from None


def _require_content(channel: str, values: Mapping[str, Any]) -> None:
    required, _ = CHANNEL_FIELDS[channel]
    for name in required:
        if not str(values.get(name) or "").strip():
            raise RenderError(f"{name}: rendered empty for this profile")
    if channel == "email" and not (values.get("html") or values.get("text")):
        raise RenderError("html: an email needs html or text, and both rendered empty")
