"""`python -m cairn_ingest`: wiring only; see app.py for the lifecycle."""

from cairn_common.runtime import run_service
from cairn_ingest.app import run
from cairn_ingest.settings import Settings


def main() -> None:
    run_service("ingest", Settings, run)


if __name__ == "__main__":
    main()
