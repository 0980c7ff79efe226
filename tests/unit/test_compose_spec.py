"""The compose files are valid Compose files: after interpolation with the
values of deploy/.env.example (as `docker compose` reads deploy/.env), each
parses with compose-spec, bindings of the Rust compose_spec parser, which
checks them against the Compose Specification (unknown keys, value types,
durations, depends_on conditions, volume syntax). No Docker daemon needed;
tests/unit/test_deploy.py checks what they mean for the farm.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from compose_spec import PyCompose

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_FILES = sorted(path.name for path in DEPLOY.glob("docker-compose*.yml"))
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_FORM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.S)


def _example_values() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
    ${VAR?error} and ${VAR:+alternative}, then $$ as $."""

    def substitute(match: re.Match) -> str:
        form = _FORM.fullmatch(match.group(1))
        if form is None:
            raise ValueError(f"not a Compose variable reference: {match.group(0)}")
        name, operator, argument = form.groups()
        value = values.get(name)
        if operator in (":-", "-"):
            return value if value or (operator == "-" and value is not None) else argument
        if operator in (":?", "?"):
            if not value and not (operator == "?" and value is not None):
                return f"required-{name.lower()}"  # docker compose would stop with the message
            return value
        if operator in (":+", "+"):
            return argument if value else ""
        return value or ""

    return _REFERENCE.sub(substitute, text).replace("$$", "$")


def compose_problem(text: str) -> str | None:
    try:
        PyCompose.from_json(json.dumps(yaml.safe_load(interpolate(text, _example_values()))))
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_follows_the_compose_specification(name):
    assert compose_problem((DEPLOY / name).read_text()) is None


def test_the_compose_check_catches_broken_files():
    text = (DEPLOY / "docker-compose.yml").read_text()
    breakages = [
        ("stop_grace_period: 2m", "stop_grace_period: two minutes"),
        ("capabilities: [gpu]", "capabilities: gpu"),
        ("condition: service_completed_successfully", "condition: service_finished"),
        ("restart: unless-stopped", "restart: sometimes"),
        ("    healthcheck:\n      test: [\"CMD-SHELL\", \"pg_isready", "    helthcheck:\n      test: [\"CMD-SHELL\", \"pg_isready"),
    ]
    for old, new in breakages:
        assert old in text, old
        assert compose_problem(text.replace(old, new, 1)), new


def test_interpolation_follows_compose():
    values = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d}", values) == "v d d "
    assert interpolate("${SET:?e} ${UNSET:?e} ${SET:+alt} ${UNSET:+alt}|$$HOME", values) == "v required-unset alt |$HOME"
