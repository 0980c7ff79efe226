"""Log lines that say which job, attempt, worker, campaign and user they are
about, without each call passing them.

The fields live in a context variable: :func:`log_context` (or
:func:`bind_fields` and :func:`reset_fields` where a block cannot wrap the
work, such as a Flask request or a Celery task's prerun/postrun) binds them for
everything the current thread logs until the block ends, nested blocks adding
to and then restoring the outer fields. :class:`ContextFieldsFilter` copies
them onto every record a handler sees, and :func:`configure_logging` installs
one handler that writes either readable text or one JSON object a line
(``FARM_LOG_FORMAT``).

A new thread starts with no fields (threads do not inherit context variables),
so a background thread that works for a job binds its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from typing import Any, Iterator, Mapping

logger = logging.getLogger(__name__)

# The fields a farm log line may carry, in the order text lines show them.
FIELDS = ("job_id", "attempt", "worker", "campaign", "user")

_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("farm_log_fields", default={})

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def bind_fields(**fields: Any) -> contextvars.Token:
    """Add ``fields`` (one of :data:`FIELDS`; None values are skipped) to the
    current context; returns the token that :func:`reset_fields` takes to
    restore what was bound before."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
    added = {key: _plain(value) for key, value in fields.items() if value is not None}
    return _fields.set({**_fields.get(), **added})


def scope_fields(**fields: Any) -> contextvars.Token:
    """Like :func:`bind_fields`, but drop what was bound before: the start of
    a unit of work (a request, a task) on a thread that served others."""
    token = _fields.set({})
    bind_fields(**fields)
    return token


def reset_fields(token: contextvars.Token) -> None:
    _fields.reset(token)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` for the log lines of the block, then restore the outer ones."""
    token = bind_fields(**fields)
    try:
        yield
    finally:
        reset_fields(token)


def bound_fields() -> dict[str, Any]:
    return dict(_fields.get())


def _plain(value: Any) -> Any:
    # ids (UUIDs, ints) are written as JSON scalars; attempt stays a number.
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class ContextFieldsFilter(logging.Filter):
    """Copies the bound fields onto each record (a field the call passed in
    ``extra`` wins). On a handler, so records of every logger get them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """The readable line, followed by the bound fields as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{key}={getattr(record, key)}" for key in FIELDS if hasattr(record, key))
        if not fields:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [{fields}]{newline}{rest}"


def json_formatter() -> logging.Formatter:
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message,
    the bound fields, whatever a call passed in ``extra``, and ``exc_info``
    with the traceback when there is one."""
    from pythonjsonlogger.json import JsonFormatter

    # ``defaults`` only puts "time" first in each line (the timestamp fills it).
    return JsonFormatter("{levelname}{name}{message}", style="{", timestamp="time", defaults={"time": None},
                         rename_fields={"levelname": "level", "name": "logger"})


def adopt_library_loggers() -> None:
    """transformers, diffusers and torch give their loggers a stderr handler of
    their own and stop them propagating; send their lines through the farm's
    handler instead (a worker calls this once it has imported them)."""
    import importlib

    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.disable_default_handler()
        module.enable_propagation()
    # torch does the same for its "torch" logger tree, in its own format
    # ("W1206 23:04:11 ... _pytree.py:630] ..."); torchao's import warns there.
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (name == "torch" or name.startswith("torch.")) and isinstance(logger, logging.Logger):
            for own in list(logger.handlers):
                logger.removeHandler(own)
            logger.propagate = True


class _FarmHandler(logging.StreamHandler):
    """The handler :func:`configure_logging` installs (and replaces when
    called again)."""


def configure_logging(level: str, log_format: str = "text", stream=None, force: bool = False) -> logging.Handler | None:
    """Route every logger (farm's, Celery's, the libraries') through one
    handler on the root logger, in ``log_format`` (text | json). In json,
    Python warnings become log records too, so that every line is JSON.

    Like ``logging.basicConfig``, it leaves a root logger that someone else
    has given handlers alone (a test runner capturing logs; a program that
    embeds farm) unless ``force``; returns the handler it installed, if any."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _FarmHandler)]
    if not force and len(root.handlers) > len(ours):
        return None
    handler = _FarmHandler(stream)
    handler.addFilter(ContextFieldsFilter())
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    for old in ours:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if log_format == "json":
        logging.captureWarnings(True)
    return handler
