"""`python -m cairn_matcher`: wiring only; see app.py for the lifecycle."""

from cairn_common.runtime import run_service
from cairn_matcher.app import run
from cairn_matcher.settings import Settings


def main() -> None:
    run_service("matcher", Settings, run)


if __name__ == "__main__":
    main()
