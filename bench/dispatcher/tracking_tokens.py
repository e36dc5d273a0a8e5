"""What sealed tracking links cost (decision 0055): sealing and opening tokens, and the size.

    uv run python bench/dispatcher/tracking_tokens.py [--tokens 20000]

Seals click tokens for a realistic message and URL with one secret, opens them with a rotation
list of two (the current one first), and prints the time per seal and per open and the token
length. Pure CPU, no servers; bounded by ``--tokens``.
"""

from __future__ import annotations

import argparse
import time

from cairn_common.tracking import LinkPayload, TrackedMessage, TrackingKeys

MESSAGE = TrackedMessage(
    delivery_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0:initial-email:1",
    instance_id="9a8b7c6d-5e4f-3a2b-1c0d-e9f8a7b6c5d4",
    journey="abandoned-cart",
    step_id="initial-email",
    profile_id="user-4711",
    address="ada.lovelace@example.com",
)
URL = "https://shop.example/cart/c-123456?utm_source=cairn&utm_medium=email&utm_campaign=cart"


def main(tokens: int) -> None:
    current = TrackingKeys("current-secret-0123456789abcdef")
    rotating = TrackingKeys(["current-secret-0123456789abcdef", "retired-secret-fedcba9876543210"])
    payload = LinkPayload(message=MESSAGE, url=URL)
    current.seal("click", payload)  # derive the keys once, outside the clock
    rotating.open("click", current.seal("click", payload))
    t0 = time.perf_counter()
    sealed = [current.seal("click", payload) for _ in range(tokens)]
    t1 = time.perf_counter()
    for token in sealed:
        rotating.open("click", token, ttl=180 * 86400)
    t2 = time.perf_counter()
    print(f"seal a click token: {(t1 - t0) / tokens * 1e6:.1f} µs ({tokens} tokens)")
    print(f"open it (two secrets, TTL checked): {(t2 - t1) / tokens * 1e6:.1f} µs")
    print(f"token length: {len(sealed[0])} characters for a {len(URL)}-character URL")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=20000)
    main(parser.parse_args().tokens)
