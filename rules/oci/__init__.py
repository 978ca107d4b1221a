"""OCI rules: deterministic layers, images, base images from Debian packages, push and load."""

from . import base, bundle, debs, files, image, layers, provenance, sbom  # noqa: F401 - registering rules and action kinds
