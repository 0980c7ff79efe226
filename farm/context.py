"""What a farm process binds once at start: settings, database, store, events."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from farm.db import Database
from farm.events import Events, make_events
from farm.settings import Settings, get_settings

logger = logging.getLogger(__name__)


@dataclass
class FarmContext:
    settings: Settings
    db: Database
    events: Events
    _storage: object | None = field(default=None, repr=False)

    @property
    def storage(self):
        # Built on first use: the scheduler never touches the store.
        if self._storage is None:
            from farm.storage import make_storage

            self._storage = make_storage(self.settings)
        return self._storage


def build_context(settings: Settings | None = None, events: Events | None = None) -> FarmContext:
    settings = settings or get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return FarmContext(settings=settings, db=Database(settings.resolved_database_url), events=events or make_events(settings))
