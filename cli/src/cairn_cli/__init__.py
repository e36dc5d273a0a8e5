"""cairn_cli."""
