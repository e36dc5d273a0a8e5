"""Control-plane commands: apply, validate, publish, journeys, stop, templates, keys, preview,
dead letters.

Every command but ``validate`` is a client of the admin API. Exit codes: 0 done; 1 problems found
or the request was refused; 2 usage; 3 the API is unreachable. ``-o json`` prints the API's answer
as JSON for scripts; the default is a readable table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from cairn_cli.control_client import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    ApiEndpoint,
    CliFailure,
)
from cairn_cli.control_output import (
    print_dead_letter,
    print_dead_letters,
    print_json,
    print_problems,
    print_table,
    read_documents,
    read_json_file,
    show_cell,
)

Command = Callable[[argparse.Namespace, ApiEndpoint], Any]


# ---- commands ------------------------------------------------------------------------------------


def apply_command(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("POST", "/v1/apply", {"documents": read_documents(args.filename)})
    if args.output == "table":
        for item in answer["applied"]:
            print(f"{item['kind']} {item['name']} {item['outcome']}")
        if answer.get("warnings"):
            print("warning: cannot be published yet:", file=sys.stderr)
            print_problems(answer["warnings"])
    return answer


def validate_command(args: argparse.Namespace) -> int:
    """Offline: parse and cross-check the files given, no server needed."""
    from cairn_control.validation import check_offline, parse_texts

    try:
        texts = [(d["text"], d["source"]) for d in read_documents(args.filename)]
    except CliFailure as failure:
        print(f"error: {failure.message}", file=sys.stderr)
        return failure.exit_code
    documents, problems = parse_texts(texts)
    reference_problems, unchecked = check_offline(documents)
    problems += reference_problems
    as_dicts = [
        {"path": p.path, "message": p.message, "source": p.source, "line": p.line} for p in problems
    ]
    if args.output == "json":
        print_json(
            {
                "valid": not problems,
                "problems": as_dicts,
                "unchecked": unchecked,
                "documents": [
                    {"kind": d.kind, "name": d.name, "source": d.source} for d in documents
                ],
            }
        )
    elif problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        print_problems(as_dicts)
    else:
        for d in documents:
            print(f"{d.kind} {d.name} valid ({d.source})")
    if unchecked and args.output == "table":
        kinds = ", ".join(f"{k.lower()}s" for k in unchecked)
        print(f"note: references to {kinds} not checked (none among the files given)")
    return EXIT_PROBLEMS if problems else EXIT_OK


def publish_command(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    query = "?dry_run=true" if args.dry_run else ""
    answer = api.call("POST", f"/v1/journeys/{_q(args.name)}/publish{query}")
    if args.output == "table":
        print(answer["message"])
    return answer


def journeys_list(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("GET", "/v1/journeys")
    if args.output == "table":
        rows = [
            (j["name"], j["state"], j["live_version"], j["versions"], j["draft_changed"],
             j["active_instances"], j["updated_at"])
            for j in answer["journeys"]
        ]  # fmt: skip
        print_table(rows, ["name", "state", "live", "versions", "unpublished", "active", "updated"])
    return answer


def journeys_show(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("GET", f"/v1/journeys/{_q(args.name)}")
    if args.output == "table":
        j = answer["journey"]
        for key in ("name", "title", "state", "live_version", "versions", "draft_changed",
                    "active_instances", "stop_mode", "stopped_at", "updated_at"):  # fmt: skip
            if j.get(key) is not None:
                print(f"{key.replace('_', ' ') + ':':<18}{show_cell(j[key])}")
        print("draft:")
        print(json.dumps(answer["draft"], indent=2, ensure_ascii=False))
    return answer


def journeys_versions(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    if args.version is not None:
        answer = api.call("GET", f"/v1/journeys/{_q(args.name)}/versions/{args.version}")
        if args.output == "table":
            live = "  (live)" if answer["live"] else ""
            published = show_cell(answer["published_at"])
            print(f"{answer['journey']} v{answer['version']}  {answer['checksum']}  "
                  f"published {published}{live}")  # fmt: skip
            print(json.dumps(answer["definition"], indent=2, ensure_ascii=False))
        return answer
    answer = api.call("GET", f"/v1/journeys/{_q(args.name)}/versions")
    if args.output == "table":
        rows = [
            (v["version"], v["live"], v["active_instances"], v["published_at"], v["checksum"][:19])
            for v in answer["versions"]
        ]
        print_table(rows, ["version", "live", "active", "published", "checksum"])
    return answer


def stats_command(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    from cairn_cli.control_stats import print_stats

    query = f"?by={args.by}" + (f"&version={args.version}" if args.version is not None else "")
    answer = api.call("GET", f"/v1/journeys/{_q(args.name)}/stats{query}")
    if args.output == "table":
        print_stats(answer, print_table)
    return answer


def journeys_diff(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    """The draft against a published version (default: the live one, else the latest), as a
    unified diff of their YAML. Exits 1 when they differ, like ``diff`` and ``kubectl diff``."""
    import difflib

    import yaml

    shown = api.call("GET", f"/v1/journeys/{_q(args.name)}")
    version = args.version or shown["journey"]["live_version"] or shown["journey"]["versions"]
    if not version:
        raise CliFailure(f"{args.name} has no published version to compare with", EXIT_PROBLEMS)
    published = api.call("GET", f"/v1/journeys/{_q(args.name)}/versions/{version}")
    old = yaml.safe_dump(published["definition"], sort_keys=False, allow_unicode=True)
    new = yaml.safe_dump(shown["draft"], sort_keys=False, allow_unicode=True)
    lines = list(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True),
            fromfile=f"{args.name} v{version}", tofile=f"{args.name} draft",
        )
    )  # fmt: skip
    answer = {"journey": args.name, "version": version, "changed": bool(lines),
              "diff": "".join(lines)}  # fmt: skip
    if args.output == "table":
        print("".join(lines) if lines else f"the draft is the same as v{version}", end="")
        if not lines:
            print()
    if lines:
        raise Differs(answer)
    return answer


class Differs(Exception):
    """``cairn journeys diff`` found differences: printed already; exit 1."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__("differs")
        self.answer = answer


def stop_command(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    mode = "exit_all" if args.exit_all else "drain"
    answer = api.call("POST", f"/v1/journeys/{_q(args.name)}/stop", {"mode": mode})
    if args.output == "table":
        print(answer["message"])
    return answer


def templates_list(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("GET", "/v1/templates")
    if args.output == "table":
        rows = [
            (t["name"], t["channel"], t["status"], t["used_by"], t["updated_at"])
            for t in answer["templates"]
        ]
        print_table(rows, ["name", "channel", "status", "live journeys", "updated"])
    return answer


def templates_set(status: str) -> Command:
    def command(args: argparse.Namespace, api: ApiEndpoint) -> Any:
        answer = api.call("POST", f"/v1/templates/{_q(args.name)}/{status}")
        if args.output == "table":
            print(f"template {answer['name']} is {answer['status']}")
        return answer

    return command


def resources_list(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    query = f"?kind={_q(args.kind)}" if args.kind else ""
    answer = api.call("GET", f"/v1/resources{query}")
    if args.output == "table":
        rows = [
            (r["kind"], r["name"], r["status"], r["source"], r["updated_at"])
            for r in answer["resources"]
        ]
        print_table(rows, ["kind", "name", "status", "source", "updated"])
    return answer


def resources_show(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("GET", f"/v1/resources/{_q(args.kind)}/{_q(args.name)}")
    if args.output == "table":
        print(f"{answer['kind']} {answer['name']} ({answer['status']}, from {answer['source']})")
        print(json.dumps(answer["document"], indent=2, ensure_ascii=False))
    return answer


def history_command(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    query = f"?limit={args.limit}"
    if args.name:
        query += f"&name={_q(args.name)}"
    if args.kind:
        query += f"&kind={_q(args.kind)}"
    answer = api.call("GET", f"/v1/audit{query}")
    if args.output == "table":
        rows = [
            (c["at"], c["action"], c["kind"], c["name"],
             ", ".join(f"{k}={v}" for k, v in sorted(c["detail"].items())))
            for c in answer["changes"]
        ]  # fmt: skip
        print_table(rows, ["at", "action", "kind", "name", "detail"])
    return answer


def keys_create(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("POST", "/v1/write-keys", {"name": args.name, "rate_limit": args.rate})
    if args.output == "table":
        key = answer["key"]
        print(f"write key {key['key_id']} ({key['name']}) created")
        print(f"secret: {answer['secret']}")
        print("The secret is shown this once; only its hash is stored. Use it as the write key.")
    return answer


def keys_list(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("GET", "/v1/write-keys")
    if args.output == "table":
        rows = [
            (k["key_id"], k["name"], k.get("rate_limit") or "unlimited", k["created_at"],
             k.get("revoked_at"))
            for k in answer["write_keys"]
        ]  # fmt: skip
        print_table(rows, ["id", "name", "rate/s", "created", "revoked"])
    return answer


def keys_revoke(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("POST", f"/v1/write-keys/{_q(args.key_id)}/revoke")
    if args.output == "table":
        print(f"write key {answer['key_id']} revoked at {show_cell(answer['revoked_at'])}")
    return answer


def preview_command(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    from cairn_cli.control_preview import print_preview

    body: dict[str, Any] = {
        "journey": args.journey,
        "step": args.step,
        "event": read_json_file(args.event, "event"),
        "profile": read_json_file(args.profile, "profile") if args.profile else {},
    }
    if args.version is not None:
        body["version"] = args.version
    answer = api.call("POST", "/v1/preview", body)
    if args.output == "table":
        print_preview(answer)
    return answer


def dead_letters_list(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    query = f"?limit={args.limit}"
    for name in ("stream", "consumer", "subject", "cursor"):
        if getattr(args, name) is not None:
            query += f"&{name}={_q(str(getattr(args, name)))}"
    answer = api.call("GET", f"/v1/dead-letters{query}")
    if args.output == "table":
        print_dead_letters(answer)
    return answer


def dead_letters_show(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("GET", f"/v1/dead-letters/{args.id}")
    if args.output == "table":
        print_dead_letter(answer)
    return answer


def dead_letters_act(action: str) -> Command:
    """``redrive`` (POST .../redrive) or ``discard`` (DELETE)."""

    def command(args: argparse.Namespace, api: ApiEndpoint) -> Any:
        if action == "redrive":
            answer = api.call("POST", f"/v1/dead-letters/{args.id}/redrive")
        else:
            answer = api.call("DELETE", f"/v1/dead-letters/{args.id}")
        if args.output == "table":
            print(answer["message"])
        return answer

    return command


def _q(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


# ---- wiring --------------------------------------------------------------------------------------


def run_api_command(command: Command) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            api = ApiEndpoint.find(args.api, args.data_dir)
            answer = command(args, api)
        except Differs as differs:
            if args.output == "json":
                print_json(differs.answer)
            return EXIT_PROBLEMS
        except CliFailure as failure:
            if args.output == "json":
                print_json({"error": failure.message, "problems": failure.problems})
            print(f"error: {failure.message}", file=sys.stderr)
            print_problems(failure.problems)
            return failure.exit_code
        if args.output == "json":
            print_json(answer)
        return EXIT_OK

    return handler


def _common(parser: argparse.ArgumentParser, *, api: bool = True) -> None:
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    if api:
        parser.add_argument("--api", help="admin API URL (default $CAIRN_API_URL or cli.json)")
        parser.add_argument(
            "--data-dir", help="cairn up's data folder holding cli.json (./.cairn, $CAIRN_DATA_DIR)"
        )


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    command: Command,
    help_text: str,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    _common(parser)
    parser.set_defaults(func=run_api_command(command))
    return parser


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def _files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", action="append", required=True, metavar="FILE|DIR",
        help="a document file or a folder of them (repeatable)",
    )  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _files(_add(sub, "apply", apply_command, "create or update drafts from YAML/JSON documents"))
    validate = sub.add_parser(
        "validate",
        help="check documents offline (no server needed)",
        description="Parse the documents and check the journeys' references against the "
        "templates, triggers, channels and destinations among the files given.",
    )
    _files(validate)
    _common(validate, api=False)
    validate.set_defaults(func=validate_command)
    publish = _add(sub, "publish", publish_command, "validate a journey's draft; make it live")
    publish.add_argument("name", metavar="NAME")
    publish.add_argument(
        "--dry-run", action="store_true", help="only check; say what publishing would do"
    )
    stop = _add(sub, "stop", stop_command, "stop a journey: no new entries; running ones drain")
    stop.add_argument("name", metavar="NAME")
    stop.add_argument("--exit-all", action="store_true", help="also exit running instances now")

    stats = _add(sub, "stats", stats_command, "a journey's funnel: entries, steps, conversions")
    stats.add_argument("name", metavar="JOURNEY")
    stats.add_argument("--version", type=int, help="one version (default: all added together)")
    stats.add_argument("--by", choices=["day", "hour"], default="day", help="series period")

    journeys = _group(sub, "journeys", "list and inspect journeys")
    _add(journeys, "list", journeys_list, "every journey with its state and live version")
    _add(journeys, "show", journeys_show, "one journey and its draft").add_argument("name")
    diff = _add(journeys, "diff", journeys_diff, "the draft against a published version")
    diff.add_argument("name", metavar="NAME")
    diff.add_argument("--version", type=int, help="compare with this version (default: live)")
    versions = _add(journeys, "versions", journeys_versions, "a journey's published versions")
    versions.add_argument("name", metavar="NAME")
    versions.add_argument("--version", type=int, help="show this version's frozen definition")

    templates = _group(sub, "templates", "template status (draft/ready)")
    _add(templates, "list", templates_list, "every template, its status and live users")
    _add(templates, "ready", templates_set("ready"), "mark a template ready").add_argument("name")
    _add(templates, "draft", templates_set("draft"), "back to draft").add_argument("name")

    resources = _group(sub, "resources", "everything applied: channels, destinations, triggers...")
    listed = _add(resources, "list", resources_list, "every applied resource")
    listed.add_argument("--kind", help="only this kind (Journey, Template, Trigger, ...)")
    shown = _add(resources, "show", resources_show, "one resource's stored document")
    shown.add_argument("kind", metavar="KIND")
    shown.add_argument("name", metavar="NAME")
    history = _add(sub, "history", history_command, "control-plane changes, oldest first")
    history.add_argument("name", nargs="?", metavar="NAME", help="only this resource")
    history.add_argument("--kind", help="only this kind")
    history.add_argument("--limit", type=int, default=50, help="the newest N changes (50)")

    keys = _group(sub, "keys", "write keys for the Tracking API")
    create = _add(keys, "create", keys_create, "create a write key; its secret is shown once")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--rate", type=int, metavar="N", help="limit to N events per second")
    _add(keys, "list", keys_list, "every write key (secrets are never shown again)")
    _add(keys, "revoke", keys_revoke, "revoke a write key at once").add_argument("key_id")

    letters = _group(sub, "dead-letters", "messages consumers gave up on: read, re-drive, discard")
    listed = _add(letters, "list", dead_letters_list, "dead letters, newest first, with reasons")
    listed.add_argument("--stream", help="only from this source stream (e.g. CAIRN_INPUTS)")
    listed.add_argument("--consumer", help="only given up by this consumer")
    listed.add_argument("--subject", help="only with this original subject (* and > allowed)")
    listed.add_argument("--limit", type=int, default=50, help="at most N (50; at most 500)")
    listed.add_argument("--cursor", type=int, help="go on from the previous page's next cursor")
    _add(
        letters, "show", dead_letters_show, "one dead letter and its original message"
    ).add_argument("id", type=int, metavar="ID")
    redrive = _add(
        letters,
        "redrive",
        dead_letters_act("redrive"),
        "publish the original again to its subject (after a fix); remove the letter",
    )
    redrive.add_argument("id", type=int, metavar="ID")
    _add(letters, "discard", dead_letters_act("discard"), "discard one dead letter").add_argument(
        "id", type=int, metavar="ID"
    )

    preview = _add(sub, "preview", preview_command, "show exactly what one step would send")
    preview.add_argument("journey", metavar="JOURNEY")
    preview.add_argument("--step", required=True, metavar="ID", help="the send step's id")
    preview.add_argument("--event", required=True, metavar="FILE", help="sample event (JSON)")
    preview.add_argument("--profile", metavar="FILE", help="sample profile traits (JSON)")
    preview.add_argument("--version", type=int, help="a published version (default: the draft)")


__all__ = ["EXIT_USAGE", "register"]
