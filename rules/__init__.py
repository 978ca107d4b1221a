"""hermetic-build's rules. Importing this package registers them with the core."""

from . import genrule  # noqa: F401
