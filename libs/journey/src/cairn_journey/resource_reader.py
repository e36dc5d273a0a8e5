"""Reading Template, Trigger, Channel and Destination documents."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from cairn_common.rates import RateError, parse_rate
from cairn_journey.model import (
    CHANNEL_TYPES,
    PROPERTY_TYPES,
    Channel,
    ChannelType,
    Destination,
    PropertySpec,
    SecretRef,
    Template,
    Trigger,
)
from cairn_journey.reader import Reader, join, type_name

LINK_HOST = re.compile(
    r"(\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*"
)
"""A host of ``options.tracking.link_hosts``: ``shop.example``, or ``*.shop.example`` for its
subdomains."""

TEMPLATE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # channel: (required, optional); email needs html and/or text besides
    "email": (("subject",), ("html", "text", "from", "reply_to", "preheader")),
    "sms": (("body",), ()),
    "push": (("title", "body"), ("data", "url", "image", "icon")),
    "webhook": (("body",), ("headers",)),
}
_MAPPING_FIELDS = ("data", "headers")
_COMMON = ("kind", "name", "description")
SECRET_LIKE = re.compile(r"(password|passwd|secret|token|api_?key|auth|private_?key)", re.I)


class ResourceReader(Reader):
    def template(self, data: dict[str, Any]) -> Template | None:
        given = data.get("channel")
        channel = _channel_type(given)
        if channel is None:
            self.keys(
                data,
                "",
                allowed=(*_COMMON, "channel", *_all_template_fields()),
                required=("name", "channel"),
            )
            if "channel" in data:
                self.problem(
                    "channel",
                    f"{given!r} is not a channel (one of {', '.join(CHANNEL_TYPES)})",
                    self.line_in(data, "channel"),
                )
            return None
        required, optional = TEMPLATE_FIELDS[channel]
        self.keys(
            data,
            "",
            allowed=(*_COMMON, "channel", *required, *optional),
            required=("name", *required),
        )
        if channel == "email" and "html" not in data and "text" not in data:
            self.problem(
                "html", "an email template needs html, text or both", self.line_in(data, "")
            )
        name = self.name(data, "name", "")
        values: dict[str, Any] = {}
        for field in (*required, *optional):
            if field in _MAPPING_FIELDS:
                values[field] = self.string_map(data, field)
            else:
                values[field] = self.string(data, field, "")
        values["from_"] = values.pop("from", None)
        description = self.string(data, "description", "")
        if self.problems or name is None:
            return None
        return Template(name=name, channel=channel, description=description, **values)

    def string_map(self, data: dict[str, Any], key: str) -> dict[str, str] | None:
        value = data.get(key)
        if value is None:
            return None
        mapping = self.mapping(value, key, self.line_in(data, key))
        if mapping is None:
            return None
        out: dict[str, str] = {}
        for k, v in mapping.items():
            if isinstance(v, str):
                out[k] = v
            elif isinstance(v, int | float | bool):
                out[k] = str(v).lower() if isinstance(v, bool) else str(v)
            else:
                self.problem(
                    join(key, k), f"expected a string, got {type_name(v)}", self.line_in(mapping, k)
                )
        return out

    def trigger(self, data: dict[str, Any]) -> Trigger | None:
        self.keys(
            data,
            "",
            allowed=(*_COMMON, "event", "properties", "additional_properties"),
            required=("name", "event"),
        )
        name = self.name(data, "name", "")
        event = self.string(data, "event", "")
        additional = self.boolean(data, "additional_properties", "")
        properties: dict[str, PropertySpec] = {}
        if data.get("properties") is not None:
            props = self.mapping(data["properties"], "properties", self.line_in(data, "properties"))
            for prop, spec in (props or {}).items():
                parsed = self.property_spec(
                    spec, join("properties", prop), self.line_in(props, prop)
                )
                if parsed is not None:
                    properties[prop] = parsed
        if self.problems or name is None or event is None:
            return None
        return Trigger(
            name=name,
            event=event,
            description=self.string(data, "description", ""),
            properties=properties,
            additional_properties=True if additional is None else additional,
        )

    def property_spec(self, value: Any, path: str, line: int | None) -> PropertySpec | None:
        if isinstance(value, str):
            value = {"type": value}
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(data, path, allowed=("type", "required", "description"), required=("type",))
        kind = data.get("type")
        if "type" in data and kind not in PROPERTY_TYPES:
            self.problem(
                join(path, "type"),
                f"{kind!r} is not a property type (one of {', '.join(PROPERTY_TYPES)})",
                self.line_in(data, "type") or line,
            )
            return None
        required = self.boolean(data, "required", path)
        if kind is None:
            return None
        return PropertySpec(
            type=kind, required=bool(required), description=self.string(data, "description", path)
        )

    def connection(self, data: dict[str, Any], kind: str) -> Channel | Destination | None:
        extra = ("type",) if kind == "Channel" else ("function",)
        self.keys(
            data,
            "",
            allowed=(
                *_COMMON,
                "provider",
                "endpoint",
                "base_url",
                "options",
                "credentials",
                *extra,
            ),
            required=("name", "provider"),
        )
        name = self.name(data, "name", "")
        provider = self.string(data, "provider", "")
        endpoint = self.string(data, "endpoint", "")
        base_url = self.string(data, "base_url", "")
        options = self.options(data)
        credentials = self.credentials(data)
        description = self.string(data, "description", "")
        if kind == "Channel":
            given = data.get("type", name if name in CHANNEL_TYPES else None)
            channel_type = _channel_type(given)
            if channel_type is None:
                what = (
                    "required but missing"
                    if given is None
                    else (f"{given!r} is not a channel type")
                )
                self.problem(
                    "type",
                    f"{what} (one of {', '.join(CHANNEL_TYPES)})",
                    self.line_in(data, "type"),
                )
            if self.problems or name is None or provider is None or channel_type is None:
                return None
            return Channel(
                name=name,
                type=channel_type,
                provider=provider,
                endpoint=endpoint,
                base_url=base_url,
                options=options,
                credentials=credentials,
                description=description,
            )
        function = self.string(data, "function", "")
        if provider == "function" and function is None:
            self.problem(
                "function", "a function destination needs its source", self.line_in(data, "")
            )
        if self.problems or name is None or provider is None:
            return None
        return Destination(
            name=name,
            provider=provider,
            endpoint=endpoint,
            base_url=base_url,
            options=options,
            credentials=credentials,
            function=function,
            description=description,
        )

    def options(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("options") is None:
            return {}
        options = self.mapping(data["options"], "options", self.line_in(data, "options"))
        for key, value in (options or {}).items():
            if SECRET_LIKE.search(key) and isinstance(value, str | int) and value != "":
                self.problem(
                    join("options", key),
                    "looks like a secret: put it under credentials as {env: VAR} or {file: /path}",
                    self.line_in(options, key),
                )
        if options is not None and options.get("rate_limit") is not None:
            try:
                parse_rate(options["rate_limit"])
            except RateError as exc:
                self.problem("options.rate_limit", str(exc), self.line_in(options, "rate_limit"))
        if options is not None and "allow_networks" in options:
            self.networks(options["allow_networks"], self.line_in(options, "allow_networks"))
        if options is not None and isinstance(options.get("tracking"), dict):
            tracking = options["tracking"]
            if "link_hosts" in tracking:
                self.link_hosts(tracking["link_hosts"], self.line_in(tracking, "link_hosts"))
        plain: dict[str, Any] = _plain(options or {})
        return plain

    def networks(self, value: Any, line: int | None) -> None:
        """``options.allow_networks``: the non-public networks (CIDRs) the channel may reach."""
        path = "options.allow_networks"
        if not isinstance(value, list):
            self.problem(path, "expected a list of networks like 10.0.0.0/8", line)
            return
        for index, cidr in enumerate(value):
            try:
                ipaddress.ip_network(str(cidr), strict=False)
            except ValueError:
                self.problem(
                    f"{path}[{index}]",
                    f"{cidr!r} is not a network like 10.0.0.0/8 or fd00::/8",
                    self.line_in(value, index) or line,
                )

    def link_hosts(self, value: Any, line: int | None) -> None:
        """``options.tracking.link_hosts``: hosts whose links are tracked even when built from
        data (decision 0055)."""
        path = "options.tracking.link_hosts"
        if not isinstance(value, list):
            self.problem(path, "expected a list of hosts like shop.example or *.shop.example", line)
            return
        for index, host in enumerate(value):
            if not isinstance(host, str) or not LINK_HOST.fullmatch(host):
                self.problem(
                    f"{path}[{index}]",
                    f"{host!r} is not a host like shop.example or *.shop.example"
                    " (no scheme, path, port or user)",
                    self.line_in(value, index) or line,
                )

    def credentials(self, data: dict[str, Any]) -> dict[str, SecretRef]:
        if data.get("credentials") is None:
            return {}
        creds = self.mapping(data["credentials"], "credentials", self.line_in(data, "credentials"))
        out: dict[str, SecretRef] = {}
        for key, value in (creds or {}).items():
            path, line = join("credentials", key), self.line_in(creds, key)
            if not isinstance(value, dict):
                self.problem(
                    path, "a literal secret is not allowed; use {env: VAR} or {file: /path}", line
                )
                continue
            self.keys(value, path, allowed=("env", "file"))
            env, file = self.string(value, "env", path), self.string(value, "file", path)
            if (env is None) == (file is None):
                self.problem(path, "needs exactly one of env or file", line)
                continue
            out[key] = SecretRef(env=env, file=file)
        return out


def _channel_type(value: Any) -> ChannelType | None:
    for kind in CHANNEL_TYPES:
        if value == kind:
            return kind
    return None


def _all_template_fields() -> list[str]:
    return sorted({f for req, opt in TEMPLATE_FIELDS.values() for f in (*req, *opt)})


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
