"""Interpreter throughput: inputs/s on one core for the abandoned-cart journey.

A realistic mix per shopper: an identify, a Cart Abandoned (entry, email, wait_for timer), then
either an Email Opened for that email (30%), an Order Completed mid-way (20%, exit + cancel), or
the wait_for timer firing (text + pause timer) and later the pause firing (push, completion);
plus unrelated page-ish events the matcher would skip. Every input is timed end to end the way
the matcher runs it: decode the profile's stored state, run_input, encode the new state.

The sequence is recorded once (ids are deterministic, so timer and delivery ids in the recorded
inputs are the ones the timed replay produces), then replayed ``--rounds`` times.

    uv run python bench/interpreter/run.py [--shoppers 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cairn_common.messages import Event, ProfileInput, TimerFired
from cairn_journey.documents import load_documents
from cairn_journey.effects import SendRequested, TimerSet
from cairn_journey.interpreter import Catalogue, run_input
from cairn_journey.model import Journey
from cairn_journey.state import ProfileState, decode_state, encode_state

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def load_catalogue() -> Catalogue:
    (journey,) = load_documents([ROOT / "examples/journeys/abandoned-cart.yaml"]).documents
    assert isinstance(journey, Journey)
    return Catalogue({(journey.name, 1): journey}, {journey.name: 1})


def event(pid: str, mid: str, now: datetime, name: str | None, **props: object) -> Event:
    return Event(
        message_id=mid,
        type="track" if name else "identify",
        profile_id=pid,
        partition=0,
        received_at=now,
        timestamp=now,
        event=name,
        properties=dict(props),
        traits={}
        if name
        else {
            "email": f"{pid}@example.com",
            "phone": "+15550100",
            "push_token": "tok",
            "first_name": "Ann",
        },
    )


def record(
    catalogue: Catalogue, shoppers: int, seed: int = 7
) -> list[tuple[ProfileInput, datetime]]:
    """Drive the scenario once, returning the inputs in order with their processing times."""
    rng = random.Random(seed)
    states: dict[str, ProfileState] = {}
    out: list[tuple[ProfileInput, datetime]] = []

    def apply(inp: ProfileInput, now: datetime) -> list[object]:
        pid = inp.profile_id
        state, effects = run_input(
            states.get(pid, ProfileState(profile_id=pid)), inp, catalogue=catalogue, now=now
        )
        states[pid] = state
        out.append((inp, now))
        return list(effects)

    def fire(timer: TimerSet, pid: str) -> list[object]:
        return apply(
            TimerFired(
                timer_id=timer.timer_id,
                profile_id=pid,
                partition=0,
                instance_id=timer.instance_id,
                step_id=timer.step_id,
                due_at=timer.due_at,
                fired_at=timer.due_at,
            ),
            timer.due_at,
        )

    for n in range(shoppers):
        pid = f"user-{n}"
        now = T0 + timedelta(seconds=n)
        apply(event(pid, f"{pid}-id", now, None), now)
        apply(event(pid, f"{pid}-view", now, "Product Viewed", sku="A-1"), now)
        effects = apply(
            event(
                pid,
                f"{pid}-cart",
                now,
                "Cart Abandoned",
                cart_id=f"c{n}",
                cart_value=round(rng.uniform(5, 500), 2),
                item_count=3,
            ),
            now,
        )
        send = next(e for e in effects if isinstance(e, SendRequested))
        timer = next(e for e in effects if isinstance(e, TimerSet))
        roll = rng.random()
        later = now + timedelta(hours=2)
        if roll < 0.3:
            apply(
                event(
                    pid, f"{pid}-open", later, "Email Opened", delivery_id=send.delivery.delivery_id
                ),
                later,
            )
        elif roll < 0.5:
            apply(
                event(pid, f"{pid}-order", later, "Order Completed", cart_id=f"c{n}", revenue=99.0),
                later,
            )
        else:
            pause = next(e for e in fire(timer, pid) if isinstance(e, TimerSet))
            if roll < 0.6:
                at = pause.due_at - timedelta(hours=1)
                apply(event(pid, f"{pid}-order", at, "Order Completed", cart_id=f"c{n}"), at)
            else:
                fire(pause, pid)
    return out


def replay(
    catalogue: Catalogue, inputs: list[tuple[ProfileInput, datetime]]
) -> tuple[float, float]:
    """Wall and CPU seconds for one replay. CPU time is what one core spends; on a shared,
    loaded machine it is the steadier figure."""
    stored: dict[str, bytes] = {}
    empty = encode_state(ProfileState())
    wall, cpu = time.perf_counter(), time.process_time()
    for inp, now in inputs:
        pid = inp.profile_id
        state = decode_state(stored.get(pid, empty))
        state, _ = run_input(state, inp, catalogue=catalogue, now=now)
        stored[pid] = encode_state(state)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shoppers", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    catalogue = load_catalogue()
    inputs = record(catalogue, args.shoppers)
    kinds: dict[str, int] = {}
    for inp, _ in inputs:
        key = inp.event or inp.type if isinstance(inp, Event) else "timer fired"
        kinds[key] = kinds.get(key, 0) + 1
    print(f"inputs per round: {len(inputs):,} from {args.shoppers:,} shoppers")
    print("mix: " + ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())))
    runs = [replay(catalogue, inputs) for _ in range(args.rounds)]
    wall = min(r[0] for r in runs)
    cpu = min(r[1] for r in runs)
    n = len(inputs)
    print(f"interpreter incl. state decode/encode, best of {args.rounds}, one core:")
    print(f"  {n / cpu:,.0f} inputs/s of CPU time ({cpu * 1e6 / n:.2f} µs/input)")
    print(f"  {n / wall:,.0f} inputs/s of wall time ({wall * 1e6 / n:.2f} µs/input)")
    relevant = [(i, t) for i, t in inputs if catalogue.interested_in(i)]
    cpu = min(replay(catalogue, relevant)[1] for _ in range(args.rounds))
    print(
        f"  {len(relevant) / cpu:,.0f} inputs/s of CPU time counting only the "
        f"{len(relevant):,} inputs a journey cares about (the matcher skips the others)"
    )


if __name__ == "__main__":
    main()
