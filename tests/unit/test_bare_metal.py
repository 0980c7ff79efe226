"""deploy/systemd/ and docs/bare-metal.md: every farm command in them is one
the CLI accepts, every FARM_ variable one the farm reads, and the worker
template gives each GPU its own device, name and metrics port."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from farm.cli import main
from farm.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
FARM_VARIABLES = {f"FARM_{name.upper()}" for name in Settings.model_fields}


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file; systemd repeats keys, so no configparser."""
    section, entries = "", []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def cli_accepts(argv: list[str]) -> str:
    """'' when the farm CLI parses ``argv`` (checked with --help, so nothing runs), else its complaint."""
    result = CliRunner().invoke(main, [*argv, "--help"])
    return "" if result.exit_code == 0 and "Usage:" in result.output else result.output


def test_the_units_are_there():
    assert {p.name for p in UNITS} == {"farm-api.service", "farm-scheduler.service", "farm-worker@.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_every_command_of_a_unit_is_a_farm_command(unit):
    commands = [value for section, key, value in unit_entries(unit) if key in ("ExecStart", "ExecStartPre")]
    assert commands
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "/opt/farm/bin/farm", command
        assert cli_accepts(argv[1:]) == "", command
    entries = unit_entries(unit)
    assert ("Service", "EnvironmentFile", "/etc/farm/farm.env") in entries
    assert {s for s, _, _ in entries} == {"Unit", "Service", "Install"}


def test_every_farm_variable_is_one_the_farm_reads():
    for path in [*UNITS, SYSTEMD / "farm.env.example", ROOT / "docs" / "bare-metal.md"]:
        unknown = set(re.findall(r"\bFARM_[A-Z0-9_]+\b", path.read_text())) - FARM_VARIABLES
        assert not unknown, f"{path.name}: {sorted(unknown)}"


def test_the_worker_template_gives_each_gpu_its_own_device_name_and_port():
    entries = unit_entries(SYSTEMD / "farm-worker@.service")
    environment = dict(value.split("=", 1) for _, key, value in entries if key == "Environment")
    assert environment["CUDA_VISIBLE_DEVICES"] == "%i"
    assert "%i" in environment["FARM_WORKER_NAME"] and "%i" in environment["FARM_METRICS_PORT"]
    stop_s = int(dict((key, value) for _, key, value in entries)["TimeoutStopSec"])
    assert stop_s > Settings.model_fields["worker_grace_s"].default  # SIGTERM's grace fits before SIGKILL


def test_the_commands_in_the_bare_metal_guide_are_farm_commands():
    text = (ROOT / "docs" / "bare-metal.md").read_text()
    checked = 0
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line.split(" #", 1)[0])
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
                words.pop(0)
            if words and words[0] in ("farm", "/opt/farm/bin/farm"):
                assert cli_accepts(words[1:]) == "", line
                checked += 1
    assert checked >= 2
