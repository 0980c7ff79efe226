"""Known-harmless start-up noise of the libraries farm uses, turned down in
one place (issue 21: `farm up` greeted a new user with two screens of it).

Only messages that tell an operator nothing they can act on are touched, and
all of them come back with FARM_LOG_LEVEL=DEBUG:
- Alembic's INFO lines (one per migration and plugin) drop to WARNING;
- transformers' notice that an image processor falls back to its PIL
  implementation because torchvision is not installed (farm never uses
  torchvision; the fallback is the intended path);
- kombu's "No hostname was supplied" for the embedded filesystem transport,
  whose URL has no host by design;
- under `farm up`, Celery's twenty-line worker banner (:func:`quiet_celery_banner`):
  the farm's own lines already say the worker registered and is ready.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_KOMBU_NO_HOSTNAME = "No hostname was supplied"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_libraries(log_level: str) -> None:
    """Turn the noise above down unless ``log_level`` is DEBUG. Idempotent."""
    if log_level.upper() == "DEBUG":
        return
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
    kombu = logging.getLogger("kombu.connection")
    if not any(isinstance(f, _DropMessage) for f in kombu.filters):
        kombu.addFilter(_DropMessage(_KOMBU_NO_HOSTNAME))


def _no_banner(sender=None, instance=None, **_) -> None:
    # Sent just before the banner is printed; the worker prints it unless quiet.
    instance.quiet = True


def quiet_celery_banner(log_level: str) -> None:
    """Leave out the banner of a Celery worker started later in this process
    (`farm up`'s worker child), unless ``log_level`` is DEBUG."""
    if log_level.upper() == "DEBUG":
        return
    from celery.signals import celeryd_after_setup

    celeryd_after_setup.connect(_no_banner, weak=False)
