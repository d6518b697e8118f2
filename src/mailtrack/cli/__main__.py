"""`python -m mailtrack.cli` runs the command line."""

from mailtrack.cli.main import app

app()
