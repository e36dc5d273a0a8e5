"""The `cairn` control-plane commands, run as real processes against the admin API."""

from __future__ import annotations

import json
from pathlib import Path

from cairn_cli.local import free_port
from tests.control.conftest import EXAMPLES, Admin, run_cli


async def test_cli_validates_the_example_journeys_offline() -> None:
    result = await run_cli("validate", "-f", "examples")
    assert result.code == 0, result
    assert "Journey abandoned-cart valid" in result.out
    assert "Journey application-reminders valid" in result.out


async def test_cli_validate_lists_every_problem_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "cart.yaml"
    bad.write_text(
        (EXAMPLES / "journeys" / "abandoned-cart.yaml")
        .read_text()
        .replace("within: 1d", "within: 1x")
        .replace("wait: 1d", "wait: soon")
    )
    result = await run_cli("validate", "-f", str(bad), "-f", "examples/templates", "-o", "json")
    assert result.code == 1, result
    problems = json.loads(result.out)["problems"]
    lines = {(p["path"].split(".")[0], p["source"], p["line"]) for p in problems}
    assert ("steps[1]", str(bad), 19) in lines  # within: 1x
    assert ("steps[1]", str(bad), 24) in lines  # wait: soon
    human = await run_cli("validate", "-f", str(bad))
    assert human.code == 1
    assert f"({bad}:19)" in human.err


async def test_cli_applies_readies_and_publishes_the_example_journeys(admin: Admin) -> None:
    applied = await run_cli("apply", "-f", "examples", api=admin.url)
    assert applied.code == 0, applied
    assert "Journey abandoned-cart created" in applied.out

    listed = await run_cli("templates", "list", "-o", "json", api=admin.url)
    assert listed.code == 0, listed
    names = sorted(t["name"] for t in json.loads(listed.out)["templates"])
    assert "cart-reminder-email" in names
    ready = await run_cli("templates", "ready", "cart-reminder-email", api=admin.url)
    assert (ready.code, ready.out.strip()) == (0, "template cart-reminder-email is ready")
    await admin.ready_all_templates()  # the rest through the API, to keep the test quick

    for name in ("abandoned-cart", "application-reminders"):
        published = await run_cli("publish", name, api=admin.url)
        assert published.code == 0, published
        assert f"{name} v1 published" in published.out

    table = await run_cli("journeys", "list", api=admin.url)
    assert table.code == 0, table
    header, *rows = table.out.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "LIVE"]
    assert [r.split()[:3] for r in rows] == [
        ["abandoned-cart", "live", "1"],
        ["application-reminders", "live", "1"],
    ]


async def test_cli_publish_refused_exits_1_with_the_problems(admin: Admin) -> None:
    await admin.apply_files(EXAMPLES)
    refused = await run_cli("publish", "abandoned-cart", api=admin.url)
    assert refused.code == 1, refused
    assert "cart-reminder-email" in refused.err
    assert "examples/journeys/abandoned-cart.yaml:14" in refused.err


async def test_cli_exit_codes_for_usage_unreachable_and_bad_token(admin: Admin) -> None:
    usage = await run_cli("apply", api=admin.url)
    assert usage.code == 2, usage
    unreachable = await run_cli("journeys", "list", api=f"http://127.0.0.1:{free_port()}")
    assert unreachable.code == 3, unreachable
    assert "cannot reach" in unreachable.err
    refused = await run_cli("journeys", "list", api=admin.url, token="wrong")
    assert refused.code == 1, refused
    assert "token" in refused.err
    missing = await run_cli("publish", "no-such-journey", api=admin.url)
    assert missing.code == 1, missing
    assert "no-such-journey" in missing.err


async def test_cli_finds_the_api_from_cli_json_written_by_cairn_up(
    admin: Admin, tmp_path: Path
) -> None:
    home = tmp_path / ".cairn"
    home.mkdir()
    (home / "cli.json").write_text(json.dumps({"api_url": admin.url, "token": "from-file"}))
    result = await run_cli("journeys", "list", "--data-dir", str(home), token="")
    assert result.code == 1, result  # it reached the API, which refused the file's token
    assert "bearer token" in result.err


async def test_cli_write_keys_create_list_revoke(admin: Admin) -> None:
    created = await run_cli(
        "keys", "create", "website", "--rate", "100", "-o", "json", api=admin.url
    )
    assert created.code == 0, created
    answer = json.loads(created.out)
    key_id, secret = answer["key"]["key_id"], answer["secret"]
    listed = await run_cli("keys", "list", api=admin.url)
    assert key_id in listed.out
    assert "100" in listed.out
    assert secret not in listed.out
    revoked = await run_cli("keys", "revoke", key_id, api=admin.url)
    assert revoked.code == 0, revoked
    assert f"write key {key_id} revoked" in revoked.out


async def test_cli_validate_of_journeys_alone_skips_references_it_cannot_check(
    tmp_path: Path,
) -> None:
    result = await run_cli("validate", "-f", "examples/journeys")
    assert result.code == 0, result
    assert "Journey abandoned-cart valid" in result.out
    assert "references to templates, channels, destinations not checked" in result.out
    email_only = tmp_path / "channels.yaml"
    email_only.write_text(
        "kind: Channel\nname: email\nprovider: smtp\nendpoint: smtp://localhost:1025\n"
    )
    result = await run_cli("validate", "-f", "examples/journeys", "-f", str(email_only))
    assert result.code == 1, result  # channels are given now, and sms and push are missing
    assert 'no channel "sms"' in result.err
    assert "no template" not in result.err


async def test_cli_diff_shows_the_draft_against_the_live_version(
    admin: Admin, tmp_path: Path
) -> None:
    await admin.apply_files(EXAMPLES)
    await admin.ready_all_templates()
    await admin.call("POST", "/v1/journeys/abandoned-cart/publish")
    changed = (EXAMPLES / "journeys" / "abandoned-cart.yaml").read_text()
    await admin.apply_text(changed.replace("wait: 1d", "wait: 2d"), source="cart.yaml")
    result = await run_cli("journeys", "diff", "abandoned-cart", api=admin.url)
    assert result.code == 1, result  # differences, like diff(1)
    assert "--- abandoned-cart v1" in result.out
    assert "-        duration: P1D" in result.out
    assert "+        duration: P2D" in result.out
    checked = await run_cli("publish", "abandoned-cart", "--dry-run", api=admin.url)
    assert checked.code == 0, checked
    assert "would freeze it as v2" in checked.out
