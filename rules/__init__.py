"""hermetic-build's rules. Importing this package registers them with the core."""

from . import conda, genrule, oci  # noqa: F401
