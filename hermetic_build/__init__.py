"""hermetic-build: ML environments as content-addressed build targets."""

__version__ = "0.1.0"
