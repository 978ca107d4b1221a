"""OCI rules: deterministic layers, images, base images from Debian packages, push and load."""

from . import base, debs, files, image, layers, sbom  # noqa: F401 - registering rules and action kinds
