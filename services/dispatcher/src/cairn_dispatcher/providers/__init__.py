"""Providers: one per Channel/Destination document, built on first use and reused."""
