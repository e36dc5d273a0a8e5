"""Dead letters through the admin API and the CLI: list, show, re-drive, discard.

The dead letters are published the way the services publish them (a ``DeadLetter`` encoded with
``cairn_common.messages`` on ``Topology.dead_letter_subject(stream)``), into real NATS."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.js.client import JetStreamContext

from cairn_cli.local_system import LocalState, write_state
from cairn_common.bus import provision, provision_topology, publish
from cairn_common.consume import ACK, Incoming, Outcome, PullConsumer, Reject, one_at_a_time
from cairn_common.messages import DeadLetter, DeliveryRequested, Event, encode
from cairn_common.topology import Topology
from cairn_control import deadletters
from tests.conftest import Servers
from tests.control.conftest import TOKEN, Admin, run_cli
from tests.foundation.test_bus import Running, fast_consumer, make_event

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _event(profile_id: str, message_id: str) -> Event:
    return Event(
        message_id=message_id, type="identify", profile_id=profile_id, partition=3,
        received_at=NOW, timestamp=NOW, user_id=profile_id, traits={"nick": "a\u0000b"},
    )  # fmt: skip


def _delivery() -> DeliveryRequested:
    return DeliveryRequested(
        delivery_id="d-42", profile_id="bob", journey="welcome", version=1, instance_id="i1",
        step_id="hello", visit=1, requested_at=NOW, channel="email", address="bob@example.com",
    )  # fmt: skip


async def _dead_letter(
    js: JetStreamContext,
    topology: Topology,
    *,
    stream: str,
    consumer: str,
    subject: str,
    data: bytes,
    reason: str,
    seq: int,
) -> None:
    letter = DeadLetter(
        stream=stream, consumer=consumer, subject=subject, reason=reason, deliveries=3, at=NOW,
        data=data, headers={"traceparent": TRACEPARENT, "Nats-Msg-Id": f"orig-{seq}"},
        stream_seq=seq,
    )  # fmt: skip
    await publish(
        js,
        topology.dead_letter_subject(stream),
        letter,
        msg_id=f"dlq:{stream}:{consumer}:{seq}",
    )


async def _three_dead_letters(js: JetStreamContext, topology: Topology) -> None:
    """1: a matcher input (NUL in a trait); 2: a delivery request; 3: undecodable bytes."""
    inputs, deliveries = topology.inputs_stream, topology.deliveries_stream
    await _dead_letter(
        js, topology, stream=inputs, consumer="matcher",
        subject=topology.input_subject(3, "event"), data=encode(_event("alice", "m-1")),
        reason="UntranslatableCharacterError [22P05]: unsupported Unicode escape sequence", seq=7,
    )  # fmt: skip
    await _dead_letter(
        js, topology, stream=deliveries, consumer="dispatcher",
        subject=topology.delivery_subject("email"), data=encode(_delivery()),
        reason="gave up after 10 deliveries: provider timeout", seq=8,
    )  # fmt: skip
    await _dead_letter(
        js, topology, stream=inputs, consumer="matcher",
        subject=topology.input_subject(5, "event"), data=b"\xff\xfe not a message",
        reason="undecodable message: invalid JSON", seq=9,
    )  # fmt: skip


async def _on_subject(js: JetStreamContext, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_dead_letters_are_listed_newest_first_with_what_they_were(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _three_dead_letters(js, topology)
    status, body = await admin.call("GET", "/v1/dead-letters")
    assert status == 200, body
    assert body["total"] == 3
    assert body["next_cursor"] is None
    items = body["dead_letters"]
    assert [i["id"] for i in items] == [3, 2, 1]
    undecodable, delivery, event = items
    assert (event["stream"], event["consumer"], event["subject"]) == (
        topology.inputs_stream, "matcher", topology.input_subject(3, "event"),
    )  # fmt: skip
    assert (event["message_type"], event["profile_id"], event["message_id"]) == (
        "event", "alice", "m-1",
    )  # fmt: skip
    assert event["reason"].startswith("UntranslatableCharacterError [22P05]")
    assert event["deliveries"] == 3
    assert event["size"] == len(encode(_event("alice", "m-1")))
    assert (delivery["message_type"], delivery["profile_id"], delivery["message_id"]) == (
        "delivery_requested", "bob", "d-42",
    )  # fmt: skip
    assert (undecodable["message_type"], undecodable["profile_id"]) == (None, None)
    assert undecodable["reason"] == "undecodable message: invalid JSON"


async def test_dead_letters_page_with_a_cursor_in_both_orders(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _three_dead_letters(js, topology)
    seen = []
    cursor = ""
    while True:
        status, page = await admin.call("GET", f"/v1/dead-letters?limit=2{cursor}")
        assert status == 200, page
        seen += [i["id"] for i in page["dead_letters"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == [3, 2, 1]
    status, first = await admin.call("GET", "/v1/dead-letters?order=oldest&limit=2")
    assert [i["id"] for i in first["dead_letters"]] == [1, 2]
    status, rest = await admin.call(
        "GET", f"/v1/dead-letters?order=oldest&limit=2&cursor={first['next_cursor']}"
    )
    assert [i["id"] for i in rest["dead_letters"]] == [3]
    assert rest["next_cursor"] is None


async def test_a_page_reads_a_bounded_part_of_the_stream_and_says_where_to_go_on(
    admin: Admin, js: JetStreamContext, topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter that matches little must not read the whole stream in one request."""
    await _three_dead_letters(js, topology)
    monkeypatch.setattr(deadletters, "MAX_SCAN", 1)
    pages = []
    cursor = ""
    while True:
        status, page = await admin.call("GET", f"/v1/dead-letters?consumer=dispatcher{cursor}")
        assert status == 200, page
        pages.append(([i["id"] for i in page["dead_letters"]], page["next_cursor"]))
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert pages == [([], 3), ([2], 2), ([], None)]


async def test_dead_letters_filter_by_stream_consumer_and_subject(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _three_dead_letters(js, topology)

    async def ids(query: str) -> tuple[list[int], int]:
        status, body = await admin.call("GET", f"/v1/dead-letters?{query}")
        assert status == 200, body
        return [i["id"] for i in body["dead_letters"]], body["total"]

    assert await ids(f"stream={topology.deliveries_stream}") == ([2], 1)
    assert await ids(f"stream={topology.inputs_stream}") == ([3, 1], 2)
    assert (await ids("consumer=matcher"))[0] == [3, 1]
    assert (await ids(f"subject={topology.namespace}.inputs.*.event"))[0] == [3, 1]
    assert (await ids(f"subject={topology.input_subject(5, 'event')}"))[0] == [3]
    assert (await ids(f"subject={topology.namespace}.deliveries.>"))[0] == [2]


async def test_dead_letters_refuse_a_bad_limit_and_unknown_ids(admin: Admin) -> None:
    for query in ("limit=0", "limit=501", "limit=ten", "order=sideways", "cursor=x", "cursor=-1"):
        status, body = await admin.call("GET", f"/v1/dead-letters?{query}")
        assert (status, body["code"]) == (422, "invalid"), query
    for method, path in (
        ("GET", "/v1/dead-letters/99"),
        ("POST", "/v1/dead-letters/99/redrive"),
        ("DELETE", "/v1/dead-letters/99"),
        ("GET", "/v1/dead-letters/abc"),
    ):
        status, body = await admin.call(method, path)
        assert (status, body["code"]) == (404, "not_found"), (method, path, body)


async def test_dead_letters_need_the_admin_token(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _three_dead_letters(js, topology)
    for method, path in (
        ("GET", "/v1/dead-letters"),
        ("GET", "/v1/dead-letters/1"),
        ("POST", "/v1/dead-letters/1/redrive"),
        ("DELETE", "/v1/dead-letters/1"),
    ):
        for token in (None, "wrong"):
            status, body = await admin.call(method, path, token=token)
            assert (status, body["code"]) == (401, "unauthorized"), (method, path)
    status, body = await admin.call("GET", "/v1/dead-letters")
    assert body["total"] == 3  # nothing was re-driven or discarded


async def test_show_decodes_the_original_or_gives_its_text(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _three_dead_letters(js, topology)
    status, shown = await admin.call("GET", "/v1/dead-letters/1")
    assert status == 200, shown
    assert shown["original"]["msg_type"] == "event"
    assert shown["original"]["traits"] == {"nick": "a\u0000b"}
    assert shown["headers"]["traceparent"] == TRACEPARENT
    assert shown["stream_seq"] == 7
    assert shown["dead_letter"]["profile_id"] == "alice"
    status, raw = await admin.call("GET", "/v1/dead-letters/3")
    assert status == 200, raw
    assert raw["original"] is None
    assert raw["original_text"].endswith("not a message")


async def test_redrive_republishes_the_original_once_and_removes_the_dead_letter(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _three_dead_letters(js, topology)
    subject = topology.input_subject(3, "event")
    status, done = await admin.call("POST", "/v1/dead-letters/1/redrive")
    assert status == 200, done
    assert (done["subject"], done["stream"], done["duplicate"]) == (
        subject, topology.inputs_stream, False,
    )  # fmt: skip
    assert done["msg_id"].startswith("redrive-1-")
    again, body = await admin.call("POST", "/v1/dead-letters/1/redrive")
    assert (again, body["code"]) == (404, "not_found")
    assert await _on_subject(js, topology.inputs_stream, subject) == 1

    sub = await js.pull_subscribe(subject, stream=topology.inputs_stream)
    [msg] = await sub.fetch(1, timeout=5)
    await sub.unsubscribe()
    assert msg.data == encode(_event("alice", "m-1"))
    assert msg.headers is not None
    assert msg.headers["traceparent"] == TRACEPARENT
    assert msg.headers["Nats-Msg-Id"] == done["msg_id"]
    assert msg.headers["Cairn-Redrive"] == "1"
    status, body = await admin.call("GET", "/v1/dead-letters")
    assert [i["id"] for i in body["dead_letters"]] == [3, 2]


async def test_two_redrives_at_once_publish_once(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _three_dead_letters(js, topology)
    answers = await asyncio.gather(
        admin.call("POST", "/v1/dead-letters/2/redrive"),
        admin.call("POST", "/v1/dead-letters/2/redrive"),
    )
    assert 200 in {status for status, _ in answers}, answers
    assert {status for status, _ in answers} <= {200, 404}, answers
    subject = topology.delivery_subject("email")
    assert await _on_subject(js, topology.deliveries_stream, subject) == 1
    status, _ = await admin.call("GET", "/v1/dead-letters/2")
    assert status == 404


async def test_a_new_dead_letter_with_an_old_id_is_not_taken_for_a_repeated_redrive(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    """The dead-letter stream recreated (ids start at 1 again) inside the duplicate window."""
    await _three_dead_letters(js, topology)
    status, first = await admin.call("POST", "/v1/dead-letters/1/redrive")
    assert status == 200, first
    await js.delete_stream(topology.dead_letter_stream)
    await provision_topology(js, topology)
    await _dead_letter(
        js, topology, stream=topology.inputs_stream, consumer="matcher",
        subject=topology.input_subject(3, "event"), data=encode(_event("carol", "m-2")),
        reason="another poison input", seq=11,
    )  # fmt: skip
    status, second = await admin.call("POST", "/v1/dead-letters/1/redrive")
    assert status == 200, second
    assert second["duplicate"] is False
    assert second["msg_id"] != first["msg_id"]
    assert await _on_subject(js, topology.inputs_stream, topology.input_subject(3, "event")) == 2


async def test_a_redriven_message_that_fails_again_comes_back_with_its_new_reason(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _three_dead_letters(js, topology)
    status, _ = await admin.call("POST", "/v1/dead-letters/1/redrive")
    assert status == 200
    await _dead_letter(
        js, topology, stream=topology.inputs_stream, consumer="matcher",
        subject=topology.input_subject(3, "event"), data=encode(_event("alice", "m-1")),
        reason="still failing", seq=10,
    )  # fmt: skip
    status, body = await admin.call("GET", "/v1/dead-letters?limit=1")
    [newest] = body["dead_letters"]
    assert (newest["id"], newest["reason"], newest["message_id"]) == (4, "still failing", "m-1")


async def test_discard_removes_one_dead_letter(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _three_dead_letters(js, topology)
    status, body = await admin.call("DELETE", "/v1/dead-letters/3")
    assert status == 200, body
    status, _ = await admin.call("GET", "/v1/dead-letters/3")
    assert status == 404
    status, body = await admin.call("GET", "/v1/dead-letters")
    assert ([i["id"] for i in body["dead_letters"]], body["total"]) == ([2, 1], 2)
    assert await _on_subject(js, topology.inputs_stream, topology.input_subject(5, "event")) == 0


async def test_a_message_on_the_dead_letter_stream_that_is_no_dead_letter_is_listed(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await js.publish(topology.dead_letter_subject(topology.inputs_stream), b"garbage")
    await _three_dead_letters(js, topology)
    status, body = await admin.call("GET", "/v1/dead-letters")
    assert status == 200, body
    unreadable = body["dead_letters"][-1]
    assert (unreadable["id"], unreadable["stream"]) == (1, topology.inputs_stream)
    assert unreadable["reason"].startswith("unreadable")
    status, refused = await admin.call("POST", "/v1/dead-letters/1/redrive")
    assert (status, refused["code"]) == (409, "conflict")


async def test_openapi_documents_the_dead_letter_routes(admin: Admin) -> None:
    async with admin.http.get(f"{admin.url}/openapi.json") as resp:
        document = await resp.json()
    paths = document["paths"]
    assert set(paths["/v1/dead-letters"]) == {"get"}
    assert set(paths["/v1/dead-letters/{id}"]) == {"get", "delete"}
    assert set(paths["/v1/dead-letters/{id}/redrive"]) == {"post"}
    assert "DeadLetterList" in document["components"]["schemas"]


async def test_a_rejected_input_is_fixed_and_redriven_through_a_real_consume_loop(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    """The whole story with the services' own consume loop: rejected, seen, fixed, re-driven,
    handled once, gone from the dead letters."""
    fixed = False
    handled: list[Incoming] = []
    done = asyncio.Event()

    async def handle(item: Incoming) -> Outcome:
        if not fixed:
            return Reject("template cart-reminder-email is not ready")
        handled.append(item)
        done.set()
        return ACK

    subject = topology.input_subject(0, "event")
    await publish(js, subject, make_event(1), msg_id="m-1", headers={"traceparent": TRACEPARENT})
    spec = fast_consumer(topology)
    await provision(js, [], [spec])
    async with Running(PullConsumer(js, topology, spec, one_at_a_time(handle, "test"))):
        letters: list[Any] = []
        for _ in range(200):  # bounded: the loop dead-letters it within a fetch or two
            _, body = await admin.call("GET", "/v1/dead-letters")
            if letters := body["dead_letters"]:
                break
            await asyncio.sleep(0.05)
        [letter] = letters
        assert (letter["consumer"], letter["subject"], letter["message_id"]) == (
            "test-consumer", subject, "m-1",
        )  # fmt: skip
        assert letter["reason"] == "template cart-reminder-email is not ready"

        fixed = True
        status, done_body = await admin.call("POST", f"/v1/dead-letters/{letter['id']}/redrive")
        assert status == 200, done_body
        await asyncio.wait_for(done.wait(), 10)
    [again] = handled
    assert isinstance(again.message, Event)
    assert again.message.message_id == "m-1"
    assert again.headers["traceparent"] == TRACEPARENT
    assert again.headers["Cairn-Redrive"] == str(letter["id"])
    _, body = await admin.call("GET", "/v1/dead-letters")
    assert body["total"] == 0


# ---- the CLI -------------------------------------------------------------------------------------


async def test_cli_lists_shows_redrives_and_discards_dead_letters(
    admin: Admin, js: JetStreamContext, topology: Topology
) -> None:
    await _three_dead_letters(js, topology)
    table = await run_cli("dead-letters", "list", api=admin.url)
    assert table.code == 0, table
    header, *rows = table.out.splitlines()
    assert header.split()[:4] == ["ID", "WHEN", "SOURCE", "SUBJECT"]
    assert [r.split()[0] for r in rows] == ["3", "2", "1"]
    assert "alice" in rows[2]
    assert "UntranslatableCharacterError" in rows[2]

    only = await run_cli(
        "dead-letters", "list", "--stream", topology.deliveries_stream, "-o", "json", api=admin.url
    )
    assert only.code == 0, only
    assert [i["id"] for i in json.loads(only.out)["dead_letters"]] == [2]
    limited = await run_cli("dead-letters", "list", "--limit", "1", api=admin.url)
    _, row, more = limited.out.splitlines()
    assert row.split()[0] == "3"
    assert more == "1 shown of 3; more with --cursor 3"

    shown = await run_cli("dead-letters", "show", "1", api=admin.url)
    assert shown.code == 0, shown
    assert "UntranslatableCharacterError" in shown.out
    assert '"profile_id": "alice"' in shown.out

    redriven = await run_cli("dead-letters", "redrive", "1", api=admin.url)
    assert redriven.code == 0, redriven
    assert "re-driven" in redriven.out
    subject = topology.input_subject(3, "event")
    assert await _on_subject(js, topology.inputs_stream, subject) == 1
    gone = await run_cli("dead-letters", "redrive", "1", api=admin.url)
    assert gone.code == 1, gone
    assert "does not exist" in gone.err

    discarded = await run_cli("dead-letters", "discard", "3", api=admin.url)
    assert discarded.code == 0, discarded
    left = await run_cli("dead-letters", "list", "-o", "json", api=admin.url)
    assert [i["id"] for i in json.loads(left.out)["dead_letters"]] == [2]


async def test_cairn_status_says_how_many_dead_letters_wait_and_the_newest_reason(
    admin: Admin, js: JetStreamContext, topology: Topology, servers: Servers, tmp_path: Path
) -> None:
    """A state.json as `cairn up` writes it, pointing at this test's servers and admin API."""
    state = LocalState(
        pid=0, nats_url=servers.nats_url, nats_monitor_url=servers.nats.monitor_url,
        database_url=servers.pg.url(), tracking_url="http://127.0.0.1:1", admin_url=admin.url,
        services={},
    )  # fmt: skip
    write_state(tmp_path, state, TOKEN)
    quiet = await run_cli("status", "--data-dir", str(tmp_path))
    assert quiet.code == 0, quiet
    assert "dead letters" not in quiet.out
    assert "admin API" in quiet.out  # the existing output is kept

    await _three_dead_letters(js, topology)
    told = await run_cli("status", "--data-dir", str(tmp_path))
    assert told.code == 0, told  # the system goes on around its dead letters
    assert told.out.splitlines()[-1] == (
        "dead letters  3 (newest: undecodable message: invalid JSON); see `cairn dead-letters list`"
    )
    as_json = await run_cli("status", "--data-dir", str(tmp_path), "-o", "json")
    report = json.loads(as_json.out)
    assert report["dead_letters"] == {
        "count": 3,
        "newest_reason": "undecodable message: invalid JSON",
    }
    assert {c["component"] for c in report["components"]} == {"nats", "postgres"}
