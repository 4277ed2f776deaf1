"""`python -m tuneloop` runs the CLI."""

from tuneloop.cli import main

main()
