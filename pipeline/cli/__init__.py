"""The `sanstream` command line."""
