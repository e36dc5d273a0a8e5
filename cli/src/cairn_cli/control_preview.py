"""How ``cairn preview`` shows a rendered message: headers first, then each part in full."""

from __future__ import annotations

import json
from typing import Any

PARTS = ("subject", "from", "reply_to", "preheader", "title", "url", "image", "icon")
BODIES = ("text", "html", "body")


def print_preview(answer: dict[str, Any]) -> None:
    target = answer.get("channel") or f"destination {answer.get('destination')}"
    version = f"v{answer['version']}" if answer.get("version") is not None else "draft"
    print(f"{answer['journey']} ({version}) step {answer['step']}: {target}")
    print(f"to:        {answer.get('to') or '-'} = {answer.get('address') or '(none)'}")
    if answer.get("template"):
        print(f"template:  {answer['template']}")
    if answer.get("skipped"):
        print(f"SKIPPED:   {answer['skipped']}")
    rendered = answer.get("rendered") or {}
    for part in PARTS:
        if rendered.get(part):
            print(f"{part + ':':<11}{rendered[part]}")
    for mapping in ("data", "headers"):
        if rendered.get(mapping):
            print(f"{mapping}:")
            print(json.dumps(rendered[mapping], indent=2, ensure_ascii=False))
    for part in BODIES:
        if rendered.get(part):
            print(f"----- {part} -----")
            print(rendered[part])
    if answer.get("missing"):
        print(f"note: not set in this sample, rendered empty: {', '.join(answer['missing'])}")
    if answer.get("destination_event"):
        print("----- destination event -----")
        print(json.dumps(answer["destination_event"], indent=2, ensure_ascii=False))
    elif not rendered:
        print("----- payload -----")
        print(json.dumps(answer.get("delivery"), indent=2, ensure_ascii=False))
