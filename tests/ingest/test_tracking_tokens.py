"""Signed tracking links: what the dispatcher writes, ingest accepts, and nobody can forge."""

from __future__ import annotations

import pytest

from cairn_common.tracking import (
    TokenError,
    TrackedMessage,
    click_url,
    open_url,
    read_link,
    sign,
    unsubscribe_url,
)

MESSAGE = TrackedMessage(
    delivery_id="d1",
    instance_id="i1",
    journey="abandoned-cart",
    step_id="initial-email",
    profile_id="user-1",
    address="ada@example.com",
)
BASE = "https://t.example"


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1].removesuffix(".gif")


def test_a_click_link_verifies_and_carries_its_url() -> None:
    link = read_link("s3cret", "click", token_of(click_url(BASE, "s3cret", MESSAGE, "https://x/")))
    assert link.message == MESSAGE
    assert link.url == "https://x/"


def test_a_link_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(TokenError):
        read_link("s3cret", "open", token_of(open_url(BASE, "other", MESSAGE)))


def test_a_retired_secret_still_verifies_when_listed() -> None:
    token = token_of(open_url(BASE, "old", MESSAGE))
    assert read_link(["new", "old"], "open", token).message == MESSAGE


def test_an_open_link_cannot_be_used_as_an_unsubscribe() -> None:
    with pytest.raises(TokenError):
        read_link("s3cret", "unsubscribe", token_of(open_url(BASE, "s3cret", MESSAGE)))
    assert read_link("s3cret", "unsubscribe", token_of(unsubscribe_url(BASE, "s3cret", MESSAGE)))


def test_a_click_link_cannot_be_retargeted() -> None:
    token = token_of(click_url(BASE, "s3cret", MESSAGE, "https://shop.example/"))
    forged = token_of(click_url(BASE, "guess", MESSAGE, "https://evil.example/"))
    tampered = forged.split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(TokenError):
        read_link("s3cret", "click", tampered)


def test_links_signed_by_the_raw_layer_without_a_kind_are_honoured() -> None:
    """The dispatcher signs flat payloads with ``sign`` (no ``k``); ingest reads them."""
    payload = {"d": "d1", "p": "user-1", "i": "i1", "s": "initial-email", "j": "abandoned-cart",
               "c": "email", "a": "ada@example.com", "u": "https://x/"}  # fmt: skip
    link = read_link("s3cret", "click", sign(payload, "s3cret"))
    assert (link.message, link.url) == (MESSAGE, "https://x/")


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "!!!.???", "e30.AAAA", "é.x"])
def test_garbage_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError):
        read_link("s3cret", "open", token)


def test_link_helpers_build_the_paths_ingest_serves() -> None:
    assert open_url("https://t.example/", "k", MESSAGE).startswith("https://t.example/t/o/")
    assert open_url(BASE, "k", MESSAGE).endswith(".gif")
    assert click_url(BASE, "k", MESSAGE, "https://x/").startswith("https://t.example/t/c/")
    assert unsubscribe_url(BASE, "k", MESSAGE).startswith("https://t.example/t/u/")
