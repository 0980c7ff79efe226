"""Reading the JSON files of the style and preset libraries: the shipped one
and users' directories, with errors that name the file and what is wrong."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def read_builtin(filename: str, error: type[Exception]) -> Any:
    resource = resources.files("farm.generation").joinpath("data", filename)
    try:
        return json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"built-in {filename}: cannot be read: {exc}") from exc


def json_files(directory: Path, kind: str, error: type[Exception]) -> list[Path]:
    """The *.json files of a user directory, in name order (a later file wins)."""
    if not directory.exists():
        # A configured but not yet created directory means "none of these yet".
        logger.warning("%s directory %s does not exist; no user %ss read from it", kind, directory, kind)
        return []
    if not directory.is_dir():
        raise error(f"{directory}: is not a directory of {kind} files")
    return sorted(path for path in directory.glob("*.json") if path.is_file())


def read_json(path: Path, error: type[Exception]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: is not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path}: is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
