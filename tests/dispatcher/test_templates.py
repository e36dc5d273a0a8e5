"""Template rendering and publish-time template checks (cairn_journey.render)."""

from __future__ import annotations

import pytest

from cairn_journey.render import RenderError, render, template_problems

EMAIL = {
    "kind": "Template",
    "name": "cart-reminder-email",
    "channel": "email",
    "subject": "{{ profile.first_name | default: 'Hi' }}, your cart is waiting",
    "html": "<p>Total {{ event.properties.total }} for {{ profile.name }}</p>",
    "text": "Journey {{ journey.name }} v{{ journey.version }}",
}


def test_email_renders_profile_event_and_journey_with_html_escaped() -> None:
    out = render(
        EMAIL,
        {
            "profile": {"first_name": "Ada", "name": "<script>x</script>"},
            "event": {"properties": {"total": 42}},
            "journey": {"name": "abandoned-cart", "version": 3},
        },
    )
    assert out.subject == "Ada, your cart is waiting"
    assert out.html == "<p>Total 42 for &lt;script&gt;x&lt;/script&gt;</p>"
    assert out.text == "Journey abandoned-cart v3"
    assert out.missing == ()


def test_missing_trait_renders_empty_and_is_reported_not_raised() -> None:
    out = render(EMAIL, {"profile": {}, "event": {"properties": {}}, "journey": {}})
    assert out.subject == "Hi, your cart is waiting"
    assert "profile.name" in out.missing
    assert "event.properties.total" in out.missing


def test_sms_whose_body_renders_empty_is_refused() -> None:
    with pytest.raises(RenderError, match="body: rendered empty"):
        render({"channel": "sms", "body": "{{ profile.code }}"}, {"profile": {}})


def test_push_data_values_are_templates() -> None:
    out = render(
        {
            "channel": "push",
            "title": "Hi {{ profile.name }}",
            "body": "Back to cart",
            "data": {"cart": "{{ event.properties.cart_id }}"},
        },
        {"profile": {"name": "Bo"}, "event": {"properties": {"cart_id": "c1"}}},
    )
    assert (out.title, out.body, out.data) == ("Hi Bo", "Back to cart", {"cart": "c1"})


def test_fields_under_spec_are_read_too() -> None:
    out = render({"kind": "Template", "spec": {"channel": "sms", "body": "ok"}}, {})
    assert out.body == "ok"


def test_publish_check_names_syntax_errors_unknown_filters_and_variables() -> None:
    problems = template_problems(
        {
            "channel": "email",
            "subject": "{{ profile.name | upcsae }}",
            "html": "{% if %}x{% endif %}",
            "text": "{{ profle.name }}",
        }
    )
    assert any(p.startswith("subject: unknown filter 'upcsae'") for p in problems)
    assert any(p.startswith("html: ") for p in problems)
    assert any(p.startswith("text: unknown variable 'profle'") for p in problems)
    assert len(problems) == 3


def test_publish_check_requires_the_channel_fields() -> None:
    assert template_problems({"channel": "sms"}) == ["body: required for sms templates"]
    assert template_problems({"channel": "email", "subject": "s"}) == [
        "html: an email template needs html or text (or both)"
    ]
    assert template_problems({"channel": "fax"})[0].startswith("channel: unknown channel 'fax'")
    assert template_problems({}) == ["channel: required (one of email, sms, push, webhook)"]


def test_a_valid_template_has_no_problems() -> None:
    assert template_problems(EMAIL) == []
    assert template_problems({"channel": "sms", "body": "{% assign n = 1 %}{{ n }}"}) == []
