"""The cyclic garbage collector and the service's long-lived heap.

A loaded service holds millions of long-lived Python objects (the item-tag catalog, a static feature
table, bundle metadata) and allocates thousands of short-lived ones per request.  Left alone, the
collector's full (generation 2) passes walk the whole long-lived heap every second or so under load,
holding the GIL for a tenth of a second each time: that pause is the serving tail.  So whatever was
just loaded to stay is moved out of the collector's sight (``gc.freeze``: reference counting still
frees it when it is dropped); each full pass then walks only what requests left behind.
"""
from __future__ import annotations

import gc


def freeze_long_lived() -> None:
    """Call right after loading state meant to stay (a bundle, a catalog): the young generations are
    collected first, so request garbage of the moment is not frozen with it."""
    gc.collect(1)
    gc.freeze()
