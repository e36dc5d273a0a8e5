"""The admin API as the CLI sees it: where it is, how to call it, what its answers mean.

The API is found from ``--api`` or ``CAIRN_API_URL`` (+ ``CAIRN_API_TOKEN``), else from the
``cli.json`` that ``cairn up`` writes in its data folder (``./.cairn``, ``--data-dir`` or
``$CAIRN_DATA_DIR``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cairn_cli.local_system import CLI_FILE, cairn_home

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
TIMEOUT_SECONDS = 300.0
"""Long enough for `stop --exit-all` of a large journey (about 13,000 profiles a second)."""


class CliFailure(Exception):
    """Ends the command with ``exit_code`` after printing the message (and problems) to stderr."""

    def __init__(self, message: str, exit_code: int, problems: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.problems = problems or []


class ApiEndpoint:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    @classmethod
    def find(cls, explicit_url: str | None = None, data_dir: str | None = None) -> ApiEndpoint:
        url = explicit_url or os.environ.get("CAIRN_API_URL")
        token = os.environ.get("CAIRN_API_TOKEN")
        cli_file = cairn_home(data_dir) / CLI_FILE
        if url is None or token is None:
            saved = _read_cli_file(cli_file)
            url = url or saved.get("api_url")
            token = token or saved.get("token")
        if not url:
            raise CliFailure(
                "no admin API to talk to: pass --api URL or set CAIRN_API_URL (and "
                f"CAIRN_API_TOKEN), or start Cairn with `cairn up` (it writes {cli_file})",
                EXIT_USAGE,
            )
        return cls(url, token)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _failure_from(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliFailure(
                f"cannot reach the admin API at {self.url}: {reason}", EXIT_UNREACHABLE
            ) from None


def _read_cli_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CliFailure(
            f"{path} is unreadable ({exc}); run `cairn up` again", EXIT_USAGE
        ) from None
    return found if isinstance(found, dict) else {}


def _failure_from(exc: urllib.error.HTTPError) -> CliFailure:
    raw = exc.read()
    try:
        body = json.loads(raw)
        message = str(body.get("message") or exc.reason)
        problems = list(body.get("problems") or [])
    except (json.JSONDecodeError, AttributeError):
        message, problems = f"HTTP {exc.code}: {raw[:200].decode(errors='replace')}", []
    if exc.code == 401:
        message += " (check CAIRN_API_TOKEN or the token in cli.json)"
    code = EXIT_UNREACHABLE if exc.code in (502, 503, 504) else EXIT_PROBLEMS
    return CliFailure(message, code, problems)


def problem_line(problem: dict[str, Any]) -> str:
    where = ""
    if problem.get("source"):
        line = problem.get("line")
        where = f" ({problem['source']}:{line})" if line is not None else f" ({problem['source']})"
    path = problem.get("path")
    return f"{path + ': ' if path else ''}{problem.get('message', '')}{where}"
