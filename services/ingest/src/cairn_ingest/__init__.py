"""cairn_ingest."""
