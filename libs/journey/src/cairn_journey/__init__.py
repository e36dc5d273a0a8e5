"""cairn_journey."""
