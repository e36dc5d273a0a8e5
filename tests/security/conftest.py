"""The abuse suite reuses the dispatcher's fixtures (database, sinks, a real dispatcher process)
and ingest's (its HTTP app on real NATS and PostgreSQL, its real process, an HTTP client)."""

from tests.dispatcher.conftest import db, sink, smtp, start_dispatcher
from tests.ingest.conftest import http, in_process, ingest_process

__all__ = ["db", "http", "in_process", "ingest_process", "sink", "smtp", "start_dispatcher"]
