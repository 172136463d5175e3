"""The CDS Client JWT replay cache on the store: ``jti`` values remembered until they expire.

The CDS Hooks authentication calls ``await cache.use(iss, jti, expires_at)`` for each token
it has otherwise accepted; ``False`` means the ``jti`` was seen before and the call is
refused. Backed by the database, the cache holds across workers and restarts.
"""

from __future__ import annotations

from datetime import datetime

import anyio.to_thread

from plugin.store.store import Store

__all__ = ["StoreReplayCache"]


class StoreReplayCache:
    """A replay cache of ``jti`` values on a :class:`Store`, for async callers.

    ``use`` runs :meth:`Store.use_jti` in a worker thread (anyio's, as FastAPI's sync
    endpoints do), so the event loop does not wait on the database.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    async def use(self, iss: str, jti: str, expires_at: datetime) -> bool:
        """``True`` the first time ``jti`` of issuer ``iss`` is used, ``False`` for a replay.

        ``expires_at`` is the token's ``exp`` plus the validator's leeway, timezone-aware.
        """
        return await anyio.to_thread.run_sync(self._store.use_jti, iss, jti, expires_at)
