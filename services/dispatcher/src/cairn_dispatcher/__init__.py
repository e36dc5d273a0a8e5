"""cairn_dispatcher."""
