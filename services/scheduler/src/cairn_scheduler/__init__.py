"""cairn_scheduler."""
