"""`python -m cairn_dispatcher`: wiring only; see app.py for the lifecycle."""

from cairn_common.runtime import run_service
from cairn_dispatcher.app import run
from cairn_dispatcher.settings import Settings


def main() -> None:
    run_service("dispatcher", Settings, run)


if __name__ == "__main__":
    main()
