"""Stand-alone tools (data preparation for the demos)."""
