"""Template readiness is checked, and /v1/validate checks without storing."""

from __future__ import annotations

from tests.control.conftest import EXAMPLES, Admin

BROKEN_TEMPLATE = """\
kind: Template
name: broken-sms
channel: sms
body: "Hi {{ profile.first_name | upcsae }}"
"""


async def test_a_template_that_cannot_render_is_not_marked_ready(admin: Admin) -> None:
    status, body = await admin.apply_text(BROKEN_TEMPLATE, source="templates/broken.yaml")
    assert status == 200, body
    status, body = await admin.call("POST", "/v1/templates/broken-sms/ready")
    assert status == 422, body
    [problem] = body["problems"]
    assert problem["path"] == "body"
    assert "upcsae" in problem["message"]
    assert (problem["source"], problem["line"]) == ("templates/broken.yaml", 4)
    _, template = await admin.call("GET", "/v1/templates/broken-sms")
    assert template["status"] == "draft"


async def test_validate_checks_documents_against_the_stored_ones_without_storing(
    admin: Admin,
) -> None:
    status, body = await admin.apply_files(EXAMPLES / "templates", EXAMPLES / "channels")
    assert status == 200, body
    journey = (EXAMPLES / "journeys" / "abandoned-cart.yaml").read_text()
    documents = [{"source": "cart.yaml", "text": journey}]
    status, body = await admin.call("POST", "/v1/validate", {"documents": documents})
    assert status == 200, body
    assert body["valid"] is True, body["problems"]
    assert [d["name"] for d in body["documents"]] == ["abandoned-cart"]

    bad = journey.replace("template: cart-reminder-sms", "template: cart-reminder-smss")
    documents = [{"source": "cart.yaml", "text": bad}]
    status, body = await admin.call("POST", "/v1/validate", {"documents": documents})
    assert status == 200, body
    assert body["valid"] is False
    [problem] = body["problems"]
    assert "cart-reminder-smss" in problem["message"]
    assert (problem["source"], problem["line"]) == ("cart.yaml", 22)
    assert await admin.pool.fetchval("SELECT count(*) FROM resources WHERE kind = 'Journey'") == 0


async def test_apply_accepts_a_raw_yaml_body(admin: Admin) -> None:
    text = (EXAMPLES / "templates" / "cart-reminder-email.yaml").read_text()
    async with admin.http.post(
        f"{admin.url}/v1/apply",
        data=text,
        headers={
            "Authorization": "Bearer test-admin-token",
            "Content-Type": "application/yaml",
            "X-Source": "cart-reminder-email.yaml",
        },
    ) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert {a["name"] for a in body["applied"]} == {
        "cart-reminder-email",
        "cart-reminder-sms",
        "cart-reminder-push",
    }


async def test_resources_and_the_audit_trail_show_what_was_applied_and_changed(
    admin: Admin,
) -> None:
    await admin.apply_files(EXAMPLES / "channels")
    status, body = await admin.call("GET", "/v1/resources?kind=Channel")
    assert status == 200, body
    assert [(r["kind"], r["name"]) for r in body["resources"]] == [
        ("Channel", "email"), ("Channel", "push"), ("Channel", "sms"),
    ]  # fmt: skip
    status, body = await admin.call("GET", "/v1/resources/Channel/sms")
    assert status == 200, body
    assert body["document"]["provider"] == "twilio"
    assert body["source"] == "examples/channels/channels.yaml"
    status, body = await admin.call("GET", "/v1/resources?kind=Chanel")
    assert (status, body["code"]) == (422, "invalid")

    await admin.apply_files(EXAMPLES / "templates")
    await admin.call("POST", "/v1/templates/cart-reminder-sms/ready")
    status, body = await admin.call("GET", "/v1/audit?name=cart-reminder-sms")
    assert status == 200, body
    assert [(c["action"], c["kind"]) for c in body["changes"]] == [
        ("apply", "Template"), ("template.ready", "Template"),
    ]  # fmt: skip
    assert body["changes"][0]["detail"]["outcome"] == "created"


async def test_new_content_for_a_ready_template_must_render(admin: Admin) -> None:
    good = BROKEN_TEMPLATE.replace(" | upcsae", "")
    await admin.apply_text(good, source="templates/sms.yaml")
    status, body = await admin.call("POST", "/v1/templates/broken-sms/ready")
    assert status == 200, body
    status, body = await admin.apply_text(BROKEN_TEMPLATE, source="templates/sms.yaml")
    assert status == 422, body
    [problem] = body["problems"]
    assert (problem["path"], problem["source"], problem["line"]) == (
        "body", "templates/sms.yaml", 4,
    )  # fmt: skip
    _, template = await admin.call("GET", "/v1/templates/broken-sms")
    assert "upcsae" not in str(template), "the ready content stays as it was"
