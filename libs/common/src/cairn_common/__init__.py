"""cairn_common."""
