"""How a ``MiniAgents`` context remembers the hash keys it queued for persistence: every key, or a bounded cache.

``MiniAgents._persist`` hands each distinct message (by ``hash_key``) to the persistence handlers once per
activation of the context.  To know what it handed over already, it keeps the keys in a set, ``_seen``: about
155 bytes per distinct message once the messages themselves are gone, for as long as the context is active.

A store that itself keeps at most one copy per hash key (``SQLiteStore``: a unique key and ``INSERT OR
IGNORE``) loses nothing when it gets a message twice, so it says so with a true ``deduplicates_by_hash_key``
attribute.  When every persistence handler of a context belongs to such a store (or the user asks for it with
``MiniAgents(dedup_cache_size=N)``), the context remembers only recent keys, in two generations of sets:

* ``_seen``, the current generation, gets every key queued (and every key found in the older one, so a message
  that keeps coming back stays remembered);
* when it holds ``generation`` keys it becomes the older generation, ``_seen_before``, and a new empty set
  replaces it; the previous older generation is dropped.

At most ``2 * generation - 1 <= dedup_cache_size`` keys are held (a key found in the older generation is
counted in both).  A key stays remembered at least until ``generation - 1`` more keys were added to the current
generation, so a message repeated within that window is not handed over again; a message that comes back after
its key was dropped is handed over again, and the store finds it stored.

On the hot path the bounded mode (``MiniAgents._persist_bounded``, installed as the instance's ``_persist``)
adds a lookup in the older generation and a length comparison per first-seen message (about 25 ns); the exact
mode (the class's ``_persist``) is the code from before the cache.  The bounded method is also right in the
exact mode (an empty older generation, an unreachable generation size), so a sequence that kept it while a
plain handler was added still hands every message over once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

#: The default bound of a context whose every handler belongs to a store that deduplicates by hash key:
#: about 15 MB of keys at most.
DEFAULT_DEDUP_CACHE_SIZE = 100_000

#: The generation size of the exact mode: never reached, so ``_seen`` keeps every key.
EXACT = sys.maxsize

#: The older generation of the exact mode (and of a bounded cache before its first rotation).
NO_KEYS: frozenset[str] = frozenset()


def check_cache_size(size: object) -> int | None:
    """Return *size* if it is a valid ``dedup_cache_size=`` (``None``, or an ``int`` of at least 1)."""
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"dedup_cache_size= needs an int (or None), got {type(size).__name__}")
    if size < 1:
        raise ValueError(f"dedup_cache_size= must be at least 1, got {size}")
    return size


def deduplicates(handler: Any) -> bool:
    """Whether *handler* is a method of a store that declares ``deduplicates_by_hash_key = True``."""
    owner = getattr(handler, "__self__", None)
    return owner is not None and getattr(owner, "deduplicates_by_hash_key", False) is True


def cache_bound(requested: int | None, handlers: Iterable[Any]) -> int | None:
    """The bound on remembered keys for the given persistence *handlers*; ``None`` means every key (exact).

    An explicit *requested* size always applies (the user accepts that plain handlers may see a message again
    after its key was dropped).  Otherwise the cache is bounded (:data:`DEFAULT_DEDUP_CACHE_SIZE`) only when
    there is at least one handler and every one belongs to a store that deduplicates by hash key.
    """
    if requested is not None:
        return requested
    handlers = list(handlers)
    if handlers and all(deduplicates(handler) for handler in handlers):
        return DEFAULT_DEDUP_CACHE_SIZE
    return None


def generation_size(bound: int | None) -> int:
    """Keys per generation for *bound* (:data:`EXACT` when ``None``): ``2 * size - 1 <= bound``."""
    return EXACT if bound is None else (bound + 1) // 2
