"""`python3 -m hermetic_build` is `hb`."""

from .cli import run

run()
