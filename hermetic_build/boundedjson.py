"""JSON from outside hb's process (a cache entry, a tree, a registry's answer, an image layout),
parsed within a bound on what json.loads makes of it. The size of such a document is bounded where it
is read (small_blob: 256 MiB for most), but the objects parsing makes are not proportional to it:
`[[],[],...]` makes a 56-byte list of every 3 bytes, so 256 MiB of it took about 5 GiB. The values a
document can make are counted on its bytes first, without parsing (json_values_at_most), and one with
more than MAX_JSON_VALUES is refused unparsed."""

from __future__ import annotations

import json

from .errors import ActionFailed

# ~250 MiB of objects at most; a conda-meta record of a 400,000-file package has ~3.2 million, an
# image manifest or config some thousands
MAX_JSON_VALUES = 4_000_000


class TooManyJsonValues(ActionFailed, ValueError):
    """A ValueError too: where a caller reports a document that does not parse, it reports this one."""


def json_values_at_most(data: bytes | str) -> int:
    """An upper bound on the values (and members) json.loads makes of `data`, counted without parsing:
    each is the document, the first of its array or object (after a '[' or '{') or follows a ','. An
    object's keys are not counted: json.loads makes one string of each distinct key, and a new key
    comes with a ',' too. Colons are left out so that names like `Pod::Usage.3pm` count nothing."""
    if isinstance(data, str):
        return data.count(",") + data.count("[") + data.count("{") + 1
    return data.count(b",") + data.count(b"[") + data.count(b"{") + 1


def loads_bounded(data: bytes | str, what: str, max_values: int = MAX_JSON_VALUES):
    """json.loads(data), refused unparsed (TooManyJsonValues naming `what`) past max_values values."""
    values = json_values_at_most(data)
    if values > max_values:
        raise TooManyJsonValues(f"{what} holds up to {values:,} JSON values, more than the {max_values:,} hb parses "
                                "of such a file: it is not what it should be (a hostile package, image or cache "
                                "entry)")
    return json.loads(data)
