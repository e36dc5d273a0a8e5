"""The abuse suite reuses the dispatcher's fixtures (database, sinks, a real dispatcher process)."""

from tests.dispatcher.conftest import db, sink, smtp, start_dispatcher

__all__ = ["db", "sink", "smtp", "start_dispatcher"]
