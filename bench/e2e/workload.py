"""The end-to-end workload, shared by the load client, the customers and the report.

One cart is one shopper: ``identify`` (email, phone, push token), then ``Cart Abandoned``. What
the shopper does next is decided here, from the seed and the cart's number, so every process
agrees without talking: 2 % of carts are worth 0 (the trigger's ``where`` refuses them: nothing
may be sent), 5 % of triggers are sent twice (a client retry: the same messageId), and of the
others 30 % open the email 1 s after it reaches the mail sink, 20 % complete the order 2 s after,
and the rest do nothing, so they get the SMS after T and the push T2 after that.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

OPEN_AFTER = 1.0
"""Seconds between an email reaching the sink and its customer opening it."""
ORDER_AFTER = 2.0
"""Seconds between an email reaching the sink and its customer completing the order."""

JOURNEY = "e2e-cart"
CHANNELS = ("email", "sms", "push")


@dataclass(frozen=True, slots=True)
class Cart:
    run: str
    index: int
    zero_value: bool
    sent_twice: bool
    reaction: str  # "open" | "order" | "none"

    @property
    def cart_id(self) -> str:
        return f"c-{self.run}-{self.index}"

    @property
    def user_id(self) -> str:
        return f"u-{self.run}-{self.index}"

    def expected(self) -> tuple[str, ...]:
        """The channels this cart must receive, once each, in this order."""
        if self.zero_value:
            return ()
        if self.reaction in ("open", "order"):
            return ("email",)
        return CHANNELS

    def events(self) -> list[dict[str, Any]]:
        traits = {
            "email": f"{self.user_id}@shop.example",
            "phone": f"+1555{self.index:07d}",
            "push_token": f"tok-{self.user_id}",
            "first_name": "Sam",
        }
        return [
            {"type": "identify", "userId": self.user_id, "traits": traits,
             "messageId": f"{self.cart_id}-id"},
            self.trigger(),
        ]  # fmt: skip

    def trigger(self) -> dict[str, Any]:
        value = 0 if self.zero_value else 20 + self.index % 180
        return {
            "type": "track",
            "userId": self.user_id,
            "event": "Cart Abandoned",
            "messageId": f"{self.cart_id}-cart",
            "properties": {
                "cart_id": self.cart_id,
                "cart_value": value,
                "item_count": 1 + self.index % 5,
                "cart_url": f"https://shop.example/cart/{self.cart_id}",
            },
        }

    def order(self) -> dict[str, Any]:
        return {
            "type": "track",
            "userId": self.user_id,
            "event": "Order Completed",
            "messageId": f"{self.cart_id}-order",
            "properties": {"cart_id": self.cart_id},
        }


def cart(seed: int, run: str, index: int) -> Cart:
    rng = random.Random(f"{seed}:{run}:{index}")
    zero, twice, draw = rng.random() < 0.02, rng.random() < 0.05, rng.random()
    reaction = "open" if draw < 0.30 else "order" if draw < 0.50 else "none"
    return Cart(run, index, zero, twice, reaction)


def parse_cart_id(cart_id: str) -> tuple[str, int]:
    """``c-{run}-{index}`` -> (run, index)."""
    _, run, index = cart_id.rsplit("-", 2)
    return run, int(index)


def documents(smtp_port: int, http_port: int, within: float, pause: float) -> str:
    """Channels pointing at the sinks (real SMTP, Twilio's and FCM's HTTP APIs), the three
    templates and the journey: email -> wait_for Email Opened of it within T -> SMS -> wait T2 ->
    push, exit on Order Completed of the cart."""
    return f"""\
kind: Channel
name: email
provider: smtp
endpoint: smtp://127.0.0.1:{smtp_port}
options: {{from: "Shop <shop@example.com>", starttls: false}}
---
kind: Channel
name: sms
provider: twilio
base_url: http://127.0.0.1:{http_port}
options: {{from: "+15550100", account_sid: ACbench, allow_networks: ["127.0.0.0/8"]}}
credentials: {{auth_token: {{env: CAIRN_BENCH_TWILIO_TOKEN}}}}
---
kind: Channel
name: push
provider: fcm
base_url: http://127.0.0.1:{http_port}
options: {{project_id: bench, allow_networks: ["127.0.0.0/8"]}}
credentials: {{access_token: {{env: CAIRN_BENCH_FCM_TOKEN}}}}
---
kind: Template
name: e2e-email
channel: email
subject: "cart {{{{ event.properties.cart_id }}}}"
html: "<p>You left {{{{ event.properties.item_count }}}} items in your cart.</p>"
text: "You left {{{{ event.properties.item_count }}}} items in your cart."
---
kind: Template
name: e2e-sms
channel: sms
body: "cart {{{{ event.properties.cart_id }}}} is still waiting"
---
kind: Template
name: e2e-push
channel: push
title: Still thinking it over?
body: Your cart is saved.
data: {{cart_id: "{{{{ event.properties.cart_id }}}}"}}
---
kind: Journey
name: {JOURNEY}
title: End-to-end bench (abandoned cart)
trigger:
  event: Cart Abandoned
  where:
    - {{property: cart_value, op: gt, value: 0}}
entry: {{repeat: always, unique_by: cart_id}}
exit:
  - {{event: Order Completed, match: cart_id}}
goal: {{event: Order Completed, match: cart_id, target: 20%}}
steps:
  - id: email
    send: {{channel: email, template: e2e-email, to: profile.email}}
  - id: opened
    wait_for:
      event: Email Opened
      of: email
      within: {_duration(within)}
      timed_out:
        - id: sms
          send: {{channel: sms, template: e2e-sms, to: profile.phone}}
        - id: pause
          wait: {_duration(pause)}
        - id: push
          send: {{channel: push, template: e2e-push, to: profile.push_token}}
"""


def _duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


TEMPLATES = ("e2e-email", "e2e-sms", "e2e-push")
