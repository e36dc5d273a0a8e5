"""cairn_matcher."""
