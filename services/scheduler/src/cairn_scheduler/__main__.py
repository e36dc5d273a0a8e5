"""`python -m cairn_scheduler`: wiring only; see app.py for the lifecycle."""

from cairn_common.runtime import run_service
from cairn_scheduler.app import run
from cairn_scheduler.settings import Settings


def main() -> None:
    run_service("scheduler", Settings, run)


if __name__ == "__main__":
    main()
