"""Sealed tracking links: what the dispatcher writes, ingest opens, and nobody can read or forge
(decision 0055)."""

from __future__ import annotations

import base64
import time

import pytest

from cairn_common.tracking import (
    ExpiredToken,
    InvalidToken,
    LinkPayload,
    TrackedMessage,
    TrackingKeys,
    click_url,
    hit_id,
    open_url,
    sign,
    verify,
)

MESSAGE = TrackedMessage(
    delivery_id="d1",
    instance_id="i1",
    journey="abandoned-cart",
    step_id="initial-email",
    profile_id="user-1",
    address="ada@example.com",
)
CLICK = LinkPayload(message=MESSAGE, url="https://shop.example/cart")


def _bytes(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_a_sealed_click_token_opens_and_carries_its_url() -> None:
    token = sign("s3cret", "click", CLICK)
    payload = verify("s3cret", "click", token)
    assert payload.message == MESSAGE
    assert payload.url == "https://shop.example/cart"
    assert abs(payload.issued - time.time()) < 60


def test_nothing_of_the_payload_is_readable_in_the_token() -> None:
    token = sign("s3cret", "click", CLICK)
    raw = _bytes(token)
    for secret in (b"user-1", b"ada@example.com", b"shop.example", b"abandoned-cart"):
        assert secret not in raw
    assert "user-1" not in token
    assert "shop" not in token
    # Sealing is deterministic per (payload, time), yet any other payload differs throughout.
    other = sign("s3cret", "click", LinkPayload(message=MESSAGE, url="https://shop.example/cars"))
    assert other != token


def test_a_token_sealed_with_another_secret_is_refused() -> None:
    token = sign("other", "open", LinkPayload(message=MESSAGE))
    with pytest.raises(InvalidToken):
        verify("s3cret", "open", token)


def test_a_retired_secret_still_opens_and_only_the_first_seals() -> None:
    old = sign("old", "open", LinkPayload(message=MESSAGE))
    keys = TrackingKeys(["new", "old"])
    assert keys.open("open", old).message == MESSAGE
    fresh = keys.seal("open", LinkPayload(message=MESSAGE))
    assert verify("new", "open", fresh).message == MESSAGE
    with pytest.raises(InvalidToken):
        verify("old", "open", fresh)


@pytest.mark.parametrize("used_as", ["click", "unsubscribe"])
def test_an_open_token_is_no_other_kind_of_token(used_as: str) -> None:
    token = sign("s3cret", "open", LinkPayload(message=MESSAGE))
    with pytest.raises(InvalidToken):
        verify("s3cret", used_as, token)  # type: ignore[arg-type]


def test_every_changed_byte_of_a_click_token_is_refused() -> None:
    raw = bytearray(_bytes(sign("s3cret", "click", CLICK)))
    for index in range(len(raw)):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        token = base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode()
        with pytest.raises(InvalidToken):
            verify("s3cret", "click", token)


def test_a_token_past_its_time_to_live_is_expired_not_invalid() -> None:
    keys = TrackingKeys("s3cret")
    day = 86400
    token = keys.seal("click", CLICK, now=time.time() - 181 * day)
    assert keys.open("click", token).url == CLICK.url  # no time-to-live: still genuine
    assert keys.open("click", token, ttl=200 * day).url == CLICK.url
    with pytest.raises(ExpiredToken):
        keys.open("click", token, ttl=180 * day)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "!!!.???", "e30.AAAA", "Q" * 40, "x" * 5000])
def test_garbage_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify("s3cret", "open", token)


def test_a_hit_has_one_message_id_per_delivery_kind_and_link() -> None:
    first = verify("s3cret", "click", sign("s3cret", "click", CLICK))
    again = verify("s3cret", "click", sign("s3cret", "click", CLICK))
    assert hit_id("click", first) == hit_id("click", again)
    other = LinkPayload(message=MESSAGE, url="https://shop.example/other")
    assert hit_id("click", other) != hit_id("click", first)
    assert hit_id("open", first) != hit_id("click", first)
    assert hit_id("click", first).startswith("tracking:click:")


def test_link_helpers_build_the_paths_ingest_serves() -> None:
    assert open_url("https://t.example/", "k", MESSAGE).startswith("https://t.example/t/o/")
    assert open_url("https://t.example", "k", MESSAGE).endswith(".gif")
    link = click_url("https://t.example", "k", MESSAGE, "https://shop.example/")
    token = link.removeprefix("https://t.example/t/c/")
    assert verify("k", "click", token).url == "https://shop.example/"
