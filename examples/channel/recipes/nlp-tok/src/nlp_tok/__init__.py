"""A tiny tokenizer, packaged as a conda noarch: python package for hermetic-build's tests."""

__version__ = "0.4.0"
