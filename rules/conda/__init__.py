"""Conda rules: conda_channel (a local channel from recipes), conda_lock (`hb lock`), conda_env
(fetch by sha256 + stage into a prefix)."""

from . import channel, env, lock, run  # noqa: F401 - registering rules
