"""Content-addressed stores: a CAS of blobs plus an action cache, local or remote."""

from .base import ActionResult, OutputEntry, Store
from .local import LocalStore

__all__ = ["ActionResult", "OutputEntry", "Store", "LocalStore"]
