"""JSON and text from clients, checked before anything else reads them.

Python's parser takes ``NaN`` and ``Infinity``, nests until it runs out of
stack, and hands over integers of any size and strings holding NUL or lone
surrogates, none of which PostgreSQL, JSON answers or the database's integer
columns can hold. :func:`loads` refuses all of these with the JSON path of the
offending value, so the caller can answer a 4xx naming the field.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

logger = logging.getLogger(__name__)

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
MAX_DEPTH = 32
MAX_INT = 2**63 - 1  # what a BIGINT column holds; every id, count and limit fits


class UnsafeJSONError(ValueError):
    """A body that is not acceptable JSON; ``field`` is where (``body`` for the whole)."""

    def __init__(self, field: str, message: str, malformed: bool = False) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.malformed = malformed  # not JSON at all (400) rather than a value to fix (422)


def _refuse_constant(name: str):
    raise UnsafeJSONError("body", f"{name} is not a number JSON allows; send a finite number")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (NUL, a lone surrogate), or None."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000); remove it"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone UTF-16 surrogate, which is not text; send valid Unicode"
    return None


def value_problems(value: Any, path: str = "body", depth: int = 0) -> tuple[str, str] | None:
    """The first (field, problem) in a parsed JSON value, walking at most MAX_DEPTH levels."""
    if depth > MAX_DEPTH:
        return path, f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        problem = text_problem(value)
        return (path, problem) if problem else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return (path, f"integer out of range; at most {MAX_INT} in size") if abs(value) > MAX_INT else None
    if isinstance(value, float):
        # The parser refused NaN and Infinity, but 1e400 still reads as infinity.
        return None if math.isfinite(value) else (path, "number out of range; send a finite number")
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        where = f"{path}.{key}" if path != "body" else str(key)
        if isinstance(key, str) and (problem := text_problem(key)):
            return where, f"the field name {problem}"
        found = value_problems(item, where, depth + 1)
        if found:
            return found
    return None


def loads(data: bytes | str) -> Any:
    """Parsed JSON, or UnsafeJSONError naming where it is unacceptable."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise UnsafeJSONError("body", f"nested too deeply; at most {MAX_DEPTH} levels", malformed=True) from None
    except UnsafeJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise UnsafeJSONError("body", f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
                              malformed=True) from None
    except ValueError as exc:  # not UTF-8, or an integer of thousands of digits
        raise UnsafeJSONError("body", f"not acceptable JSON: {exc}", malformed=True) from None
    found = value_problems(value)
    if found:
        raise UnsafeJSONError(*found)
    return value


class CheckedModel(BaseModel):
    """A request model: unknown fields, NaN and infinities refused, and every
    field's text (nested values too) free of NUL and lone surrogates."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if isinstance(value, (str, list, dict, int)) and not isinstance(value, bool):
            found = value_problems(value, "value")
            if found:
                where, problem = found
                raise ValueError(problem if where == "value" else f"{where.removeprefix('value.')}: {problem}")
        return value
