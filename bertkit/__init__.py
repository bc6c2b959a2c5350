"""bertkit."""
