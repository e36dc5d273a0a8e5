"""Signed tracking links: what the dispatcher writes, ingest accepts, and nobody can forge."""

from __future__ import annotations

import pytest

from cairn_common.tracking import (
    InvalidToken,
    LinkPayload,
    TrackedMessage,
    click_url,
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


def test_a_signed_click_token_verifies_and_carries_its_url() -> None:
    token = sign("s3cret", "click", LinkPayload(message=MESSAGE, url="https://shop.example/cart"))
    payload = verify("s3cret", "click", token)
    assert payload.message == MESSAGE
    assert payload.url == "https://shop.example/cart"


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = sign("other", "open", LinkPayload(message=MESSAGE))
    with pytest.raises(InvalidToken):
        verify("s3cret", "open", token)


def test_a_retired_secret_still_verifies_when_listed() -> None:
    token = sign("old", "open", LinkPayload(message=MESSAGE))
    assert verify(["new", "old"], "open", token).message == MESSAGE


def test_an_open_token_cannot_be_used_as_an_unsubscribe() -> None:
    token = sign("s3cret", "open", LinkPayload(message=MESSAGE))
    with pytest.raises(InvalidToken):
        verify("s3cret", "unsubscribe", token)


def test_a_click_link_cannot_be_retargeted() -> None:
    token = sign("s3cret", "click", LinkPayload(message=MESSAGE, url="https://shop.example/"))
    forged_body = sign("guess", "click", LinkPayload(message=MESSAGE, url="https://evil.example/"))
    tampered = forged_body.split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(InvalidToken):
        verify("s3cret", "click", tampered)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "!!!.???", "e30.AAAA"])
def test_garbage_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify("s3cret", "open", token)


def test_link_helpers_build_the_paths_ingest_serves() -> None:
    assert open_url("https://t.example/", "k", MESSAGE).startswith("https://t.example/t/o/")
    assert open_url("https://t.example", "k", MESSAGE).endswith(".gif")
    link = click_url("https://t.example", "k", MESSAGE, "https://shop.example/")
    token = link.removeprefix("https://t.example/t/c/")
    assert verify("k", "click", token).url == "https://shop.example/"
