"""What the image's Python sees: run by //research:in-image with the image's root filesystem as `/`."""

import json
import os
import sys

import numpy

try:
    open("/opt/env/written-by-a-build-step", "w").close()
    read_only = False
except OSError:
    read_only = True
print(json.dumps({
    "python": sys.version.split()[0],
    "executable": sys.executable,
    "numpy": numpy.__version__,
    "numpy_from": os.path.dirname(numpy.__file__),
    "busybox": os.path.exists("/bin/busybox"),
    "read_only": read_only,
    "hashseed": os.environ.get("PYTHONHASHSEED"),
    "epoch": os.environ.get("SOURCE_DATE_EPOCH"),
}, sort_keys=True))
