"""Who may do what on NATS: one user per service, with permissions derived from the topology.

NATS refuses anonymous clients once an ``authorization`` block lists users, so every deployment
(``cairn up``, ``deploy/k8s``) runs with these users and nothing else:

==============  ==========================================================================
user            may
==============  ==========================================================================
``ingest``      publish events into the inputs; answer NATS ingestion requests
                (``{ns}.ingest.>``); as host of the admin API, read and delete dead letters
                and re-drive them to the inputs or the deliveries
``matcher``     consume the inputs (its per-partition consumers: create, delete), trim them
                (purge below the committed sequence), publish delivery requests
``scheduler``   publish fired timers into the inputs
``dispatcher``  consume the deliveries, publish delivery results into the inputs
``client``      a Segment-style producer using NATS ingestion: publish requests to
                ``{ns}.ingest.>`` and read the answers, nothing else; ingest checks its
                write key like the HTTP API does
``setup``       everything on the namespace's own streams and subjects (provisioning,
                operators' tools), nothing on another namespace's
==============  ==========================================================================

Every service may also create and update the namespace's streams and durable consumers (each
provisions the whole topology at start, idempotently), read the consumers' state (lag metrics),
pull from and acknowledge its own consumers, dead-letter to ``{ns}.dlq.>`` and settle
JetStream's give-up notices. No service user may delete a stream, purge one other than the
matcher's inputs, touch another namespace's subjects, or publish another service's messages: a
dispatcher's credentials cannot inject events, and a client's cannot request deliveries.

Replies come back on a per-service inbox prefix (:func:`inbox_prefix`), which only that user may
subscribe to, so no user can read another's acknowledgements or answers.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from cairn_common.topology import Topology

SERVICES = ("ingest", "matcher", "scheduler", "dispatcher")
ROLES = (*SERVICES, "client", "setup")

JS = "$JS.API"


def user_name(namespace: str, role: str) -> str:
    """The NATS user of ``role`` in ``namespace`` (several Cairns may share one NATS)."""
    return f"{namespace}-{role}"


def inbox_prefix(namespace: str, role: str) -> str:
    """Where ``role``'s replies arrive. Not under ``_INBOX``: clients subscribe there."""
    return f"_CAIRN_INBOX.{namespace}.{role}"


def new_passwords(roles: tuple[str, ...] = ROLES) -> dict[str, str]:
    return {role: secrets.token_urlsafe(24) for role in roles}


def _streams(topology: Topology) -> list[str]:
    return [s.name for s in topology.streams()]


def _provisioning(topology: Topology) -> list[str]:
    """Create or update the namespace's streams and durable consumers, and read their state."""
    allowed = [f"{JS}.INFO"]
    for stream in _streams(topology):
        allowed += [
            f"{JS}.STREAM.INFO.{stream}",
            f"{JS}.STREAM.CREATE.{stream}",
            f"{JS}.STREAM.UPDATE.{stream}",
            f"{JS}.CONSUMER.INFO.{stream}.*",
            f"{JS}.CONSUMER.CREATE.{stream}.>",
            f"{JS}.CONSUMER.DURABLE.CREATE.{stream}.*",
        ]
    return allowed


def _consuming(*streams: str) -> list[str]:
    """Pull from, and settle messages of, durable consumers on ``streams``."""
    allowed: list[str] = []
    for stream in streams:
        allowed += [f"{JS}.CONSUMER.MSG.NEXT.{stream}.*", f"$JS.ACK.{stream}.>"]
    return allowed


def _give_ups(topology: Topology) -> list[str]:
    """Settle JetStream's max-deliveries notices: read and delete the message a consumer gave
    up on (``cairn_common.give_ups``), in the streams whose consumers deliver."""
    allowed = _consuming(topology.give_ups_stream)
    for stream in (topology.inputs_stream, topology.deliveries_stream):
        allowed += [f"{JS}.STREAM.MSG.GET.{stream}", f"{JS}.STREAM.MSG.DELETE.{stream}"]
    return allowed


def _everything_in(topology: Topology) -> list[str]:
    """Every JetStream operation on the namespace's own streams and consumers, and its subjects;
    nothing on another namespace's (a shared server's other Cairns stay out of reach)."""
    allowed = [f"{JS}.INFO", f"{topology.namespace}.>"]
    for stream in _streams(topology):
        allowed += [
            f"{JS}.STREAM.*.{stream}",
            f"{JS}.STREAM.MSG.*.{stream}",
            f"{JS}.CONSUMER.*.{stream}",
            f"{JS}.CONSUMER.*.{stream}.>",
            f"{JS}.CONSUMER.DURABLE.CREATE.{stream}.*",
            f"{JS}.CONSUMER.MSG.NEXT.{stream}.*",
            f"$JS.ACK.{stream}.>",
        ]
    return allowed


def permissions(topology: Topology, role: str) -> dict[str, Any]:
    """The NATS ``permissions`` of ``role`` (see the table in this module's docstring)."""
    ns = topology.namespace
    inbox = f"{inbox_prefix(ns, role)}.>"
    if role == "client":
        return {
            "publish": {"allow": [topology.ingest_subjects]},
            "subscribe": {"allow": ["_INBOX.>"]},
        }
    if role == "setup":
        return {"publish": {"allow": _everything_in(topology)}, "subscribe": {"allow": [inbox]}}
    if role not in SERVICES:
        raise ValueError(f"no NATS role {role!r} (one of {', '.join(ROLES)})")
    publish = [*_provisioning(topology), *_give_ups(topology), f"{ns}.dlq.>"]
    subscribe = [inbox]
    extra: dict[str, Any] = {}
    if role == "ingest":
        dead = topology.dead_letter_stream
        publish += [
            # Events; and the admin API re-drives a dead letter to where it came from.
            f"{ns}.inputs.>",
            f"{ns}.deliveries.>",
            f"{JS}.STREAM.MSG.GET.{dead}",
            f"{JS}.STREAM.MSG.DELETE.{dead}",
        ]
        subscribe.append(topology.ingest_subjects)
        extra["allow_responses"] = True  # answer NATS ingestion requests on their reply subject
    elif role == "matcher":
        inputs = topology.inputs_stream
        publish += [
            *_consuming(inputs),
            f"{JS}.CONSUMER.DELETE.{inputs}.*",
            f"{JS}.STREAM.PURGE.{inputs}",
            f"{ns}.deliveries.>",
        ]
    elif role == "scheduler":
        publish.append(f"{ns}.inputs.*.timer")
    elif role == "dispatcher":
        publish += [*_consuming(topology.deliveries_stream), f"{ns}.inputs.*.result"]
    return {
        "publish": {"allow": sorted(set(publish))},
        "subscribe": {"allow": subscribe},
        **extra,
    }


def users(topology: Topology, passwords: Mapping[str, str]) -> list[dict[str, Any]]:
    """The ``authorization.users`` entries for the roles in ``passwords``."""
    return [
        {
            "user": user_name(topology.namespace, role),
            "password": password,
            "permissions": permissions(topology, role),
        }
        for role, password in passwords.items()
    ]


def authorization_block(entries: list[dict[str, Any]]) -> str:
    """``authorization { users = [...] }`` in NATS configuration syntax (a superset of JSON)."""
    return f"authorization: {json.dumps({'users': entries}, indent=2)}\n"


NATS_USERS_SECRET = "cairn-nats-users"
"""The Kubernetes Secret holding each role's password under the role's name (docs/deploy.md)."""


def password_variable(role: str) -> str:
    return f"CAIRN_NATS_PASSWORD_{role.upper()}"


def helm_values(topology: Topology, secret: str = NATS_USERS_SECRET) -> dict[str, Any]:
    """Values for the NATS Helm chart (1.x) that add these users to the server: each password is
    a variable of the NATS container (``<< $VAR >>`` is written unquoted, so nats-server reads
    it from its environment), filled from ``secret``; the config file holds no password."""
    entries = users(topology, {role: f"<< ${password_variable(role)} >>" for role in ROLES})
    env = {
        password_variable(role): {"valueFrom": {"secretKeyRef": {"name": secret, "key": role}}}
        for role in ROLES
    }
    return {"config": {"merge": {"authorization": {"users": entries}}}, "container": {"env": env}}
