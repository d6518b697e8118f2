"""The `mailtrack` command line."""
