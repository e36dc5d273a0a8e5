"""Control-plane commands: apply, validate, publish, journeys, stop, templates, keys, preview.

Every command but ``validate`` is a client of the admin API. Exit codes: 0 done; 1 problems found
or the request was refused; 2 usage; 3 the API is unreachable. ``-o json`` prints the API's answer
as JSON for scripts; the default is a readable table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cairn_cli.control_client import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    ApiEndpoint,
    CliFailure,
    problem_line,
)

DOCUMENT_SUFFIXES = (".yaml", ".yml", ".json")
Command = Callable[[argparse.Namespace, ApiEndpoint], Any]


# ---- output --------------------------------------------------------------------------------------


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    text = str(value)
    if len(text) >= 19 and text[4:5] == "-" and text[10:11] == "T":
        return text[:19].replace("T", " ")  # ISO timestamps, to the second
    return text


def print_problems(problems: Sequence[dict[str, Any]]) -> None:
    for problem in problems:
        print(f"  {problem_line(problem)}", file=sys.stderr)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# ---- documents from files ------------------------------------------------------------------------


def document_files(paths: Sequence[str]) -> list[Path]:
    """Files named, and every .yaml/.yml/.json file under directories named, in a stable order."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DOCUMENT_SUFFIXES)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise CliFailure(f"{name}: no such file or directory", EXIT_PROBLEMS)
    if not found:
        raise CliFailure(f"no .yaml, .yml or .json files in {', '.join(paths)}", EXIT_PROBLEMS)
    return found


def read_documents(paths: Sequence[str]) -> list[dict[str, str]]:
    out = []
    for path in document_files(paths):
        try:
            out.append({"source": str(path), "text": path.read_text(encoding="utf-8")})
        except (OSError, UnicodeDecodeError) as exc:
            raise CliFailure(f"{path}: cannot read it ({exc})", EXIT_PROBLEMS) from None
    return out


def read_json_file(name: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(name).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliFailure(f"{what} file {name}: {exc.strerror or exc}", EXIT_PROBLEMS) from None
    except json.JSONDecodeError as exc:
        raise CliFailure(f"{what} file {name}: not JSON ({exc})", EXIT_PROBLEMS) from None
    if not isinstance(value, dict):
        raise CliFailure(f"{what} file {name}: expected a JSON object", EXIT_PROBLEMS)
    return value


# ---- commands ------------------------------------------------------------------------------------


def apply_command(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("POST", "/v1/apply", {"documents": read_documents(args.filename)})
    if args.output == "table":
        for item in answer["applied"]:
            print(f"{item['kind']} {item['name']} {item['outcome']}")
    return answer


def validate_command(args: argparse.Namespace) -> int:
    """Offline: parse and cross-check the files given, no server needed."""
    from cairn_control.validation import check_documents, parse_texts

    try:
        texts = [(d["text"], d["source"]) for d in read_documents(args.filename)]
    except CliFailure as failure:
        print(f"error: {failure.message}", file=sys.stderr)
        return failure.exit_code
    documents, problems = parse_texts(texts)
    problems += check_documents(documents, [])
    as_dicts = [
        {"path": p.path, "message": p.message, "source": p.source, "line": p.line} for p in problems
    ]
    if args.output == "json":
        print_json(
            {
                "valid": not problems,
                "problems": as_dicts,
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
    return EXIT_PROBLEMS if problems else EXIT_OK


def publish_command(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    answer = api.call("POST", f"/v1/journeys/{_q(args.name)}/publish")
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
                print(f"{key.replace('_', ' ') + ':':<18}{_cell(j[key])}")
        print("draft:")
        print(json.dumps(answer["draft"], indent=2, ensure_ascii=False))
    return answer


def journeys_versions(args: argparse.Namespace, api: ApiEndpoint) -> Any:
    if args.version is not None:
        answer = api.call("GET", f"/v1/journeys/{_q(args.name)}/versions/{args.version}")
        if args.output == "table":
            live = "  (live)" if answer["live"] else ""
            published = _cell(answer["published_at"])
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
        print(f"write key {answer['key_id']} revoked at {_cell(answer['revoked_at'])}")
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


def _q(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


# ---- wiring --------------------------------------------------------------------------------------


def run_api_command(command: Command) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            api = ApiEndpoint.find(args.api, args.home)
            answer = command(args, api)
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
        parser.add_argument("--home", help="cairn up's data folder holding cli.json (./.cairn)")


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
    stop = _add(sub, "stop", stop_command, "stop a journey: no new entries; running ones drain")
    stop.add_argument("name", metavar="NAME")
    stop.add_argument("--exit-all", action="store_true", help="also exit running instances now")

    journeys = _group(sub, "journeys", "list and inspect journeys")
    _add(journeys, "list", journeys_list, "every journey with its state and live version")
    _add(journeys, "show", journeys_show, "one journey and its draft").add_argument("name")
    versions = _add(journeys, "versions", journeys_versions, "a journey's published versions")
    versions.add_argument("name", metavar="NAME")
    versions.add_argument("--version", type=int, help="show this version's frozen definition")

    templates = _group(sub, "templates", "template status (draft/ready)")
    _add(templates, "list", templates_list, "every template, its status and live users")
    _add(templates, "ready", templates_set("ready"), "mark a template ready").add_argument("name")
    _add(templates, "draft", templates_set("draft"), "back to draft").add_argument("name")

    keys = _group(sub, "keys", "write keys for the Tracking API")
    create = _add(keys, "create", keys_create, "create a write key; its secret is shown once")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--rate", type=int, metavar="N", help="limit to N events per second")
    _add(keys, "list", keys_list, "every write key (secrets are never shown again)")
    _add(keys, "revoke", keys_revoke, "revoke a write key at once").add_argument("key_id")

    preview = _add(sub, "preview", preview_command, "show exactly what one step would send")
    preview.add_argument("journey", metavar="JOURNEY")
    preview.add_argument("--step", required=True, metavar="ID", help="the send step's id")
    preview.add_argument("--event", required=True, metavar="FILE", help="sample event (JSON)")
    preview.add_argument("--profile", metavar="FILE", help="sample profile traits (JSON)")
    preview.add_argument("--version", type=int, help="a published version (default: the draft)")


__all__ = ["EXIT_USAGE", "register"]
