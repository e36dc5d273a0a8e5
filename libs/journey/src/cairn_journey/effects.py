"""What the interpreter asks the world to do. The matcher applies them in one transaction.

Tagged structs (``"effect": "<class name>"``), so they can be stored or logged as JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from cairn_common.messages import DeliveryRequested


class EffectBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="effect", tag=True):
    pass


class InstanceStarted(EffectBase, frozen=True, kw_only=True):
    instance_id: str
    journey: str
    version: int
    unique_value: str | None
    started_at: datetime
    profile_id: str = ""
    trigger_message_id: str = ""


class InstanceEnded(EffectBase, frozen=True, kw_only=True):
    """``completed``: ran off the end of a step list. ``exited``: an exit event
    (``reason="exit:<event>"``), a stop with exit-all (``reason`` as sent), or the instance
    lifetime limit (``reason="lifetime"``)."""

    instance_id: str
    journey: str
    version: int
    status: Literal["completed", "exited"]
    reason: str
    ended_at: datetime | None = None


class InstanceConverted(EffectBase, frozen=True, kw_only=True):
    instance_id: str
    journey: str
    version: int
    converted_at: datetime | None = None


class TimerSet(EffectBase, frozen=True, kw_only=True):
    timer_id: str
    instance_id: str
    step_id: str
    due_at: datetime
    kind: Literal["wait", "wait_for", "send"]


class TimerCancelled(EffectBase, frozen=True, kw_only=True):
    timer_id: str


class SendRequested(EffectBase, frozen=True, kw_only=True):
    delivery: DeliveryRequested


class TraitsUpdated(EffectBase, frozen=True, kw_only=True):
    """An ``update`` step changed the profile's traits: ``set`` (increments already added up)
    and ``unset`` (keys removed); the matcher writes them to ``profiles`` in the same commit."""

    set: dict[str, Any]
    unset: tuple[str, ...] = ()


class Counted(EffectBase, frozen=True, kw_only=True):
    """An analytics increment. ``step_id`` is ``""`` for journey-level counters.

    Counters: ``entered``, ``completed``, ``exited:<exit event>`` (``exited:lifetime``,
    ``exited:<stop reason>``), ``converted``; per step: ``reached``, ``send_requested``,
    ``skipped:no_address``, ``matched``, ``timed_out``, ``branch:<case name or index>``,
    ``branch:otherwise``, ``split:<path name or index>``, ``sends:<path>``, ``converted:<path>``,
    ``winner:<path>`` (a split's experiment figures), ``updated``, ``withheld``; everything a
    holdout instance counts is prefixed ``holdout:``; entry refusals (journey
    level):
    ``skipped:repeat_once``, ``skipped:cooldown``, ``skipped:already_active``,
    ``skipped:no_unique_value``, ``skipped:instance_limit``, ``skipped:outside_window``.
    """

    journey: str
    version: int
    step_id: str
    counter: str
    amount: int = 1


Effect = (
    InstanceStarted
    | InstanceEnded
    | InstanceConverted
    | TimerSet
    | TimerCancelled
    | SendRequested
    | TraitsUpdated
    | Counted
)
