"""`python3 -m hermetic_build` is `hb`."""

from .cli import main

main(prog_name="hb")
