"""Static checks of deploy/: Docker cannot run in the test environment, so the
compose files are parsed with PyYAML and checked against the farm CLI and the
FARM_ configuration variables the farm reads.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.worker.yml"]

# The configuration variables the farm reads: the fields of farm.settings.
from farm.settings import Settings  # noqa: E402

FARM_VARIABLES = {f"FARM_{name.upper()}" for name in Settings.model_fields}

# The farm CLI the deployment may use: positional arguments, then options
# (name -> kind: "flag", "str", "int", "float" or a set of choices).
CLI = {
    ("db", "upgrade"): (0, {}),
    ("db", "wait"): (0, {"--timeout": "float"}),
    ("api",): (0, {"--host": "str", "--port": "int"}),
    ("scheduler",): (0, {}),
    ("worker",): (0, {"--name": "str", "--vram-gb": "float"}),
    ("users", "create"): (1, {"--admin": "flag", "--team": "str", "--password": "str"}),
    ("models", "add"): (2, {"--family": {"sd", "sdxl"}}),
    ("models", "pull"): (1, {}),
}

_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?])[^}]*)?\}")


def _placeholder(value: str) -> bool:
    return bool(_INTERPOLATION.fullmatch(value))


def _check_value(kind, value: str) -> str | None:
    if _placeholder(value) or value in ("…", "..."):
        return None
    if kind == "int":
        return None if value.isdigit() else f"{value!r} is not an int"
    if kind == "float":
        try:
            float(value)
        except ValueError:
            return f"{value!r} is not a number"
        return None
    if isinstance(kind, set):
        return None if value in kind else f"{value!r} not in {sorted(kind)}"
    return None


def cli_problem(argv: list[str]) -> str | None:
    """None when argv is a valid farm command line, else what is wrong."""
    if not argv or argv[0] != "farm":
        return f"not a farm command: {argv!r}"
    words = argv[1:]
    for command, (n_args, options) in sorted(CLI.items(), key=lambda item: -len(item[0])):
        if tuple(words[: len(command)]) != command:
            continue
        rest = words[len(command):]
        positional: list[str] = []
        i = 0
        while i < len(rest):
            word = rest[i]
            if word.startswith("--"):
                name, _, inline = word.partition("=")
                if name not in options:
                    return f"unknown option {name} for 'farm {' '.join(command)}'"
                kind = options[name]
                if kind == "flag":
                    i += 1
                    continue
                if inline:
                    value = inline
                    i += 1
                elif i + 1 < len(rest):
                    value = rest[i + 1]
                    i += 2
                else:
                    return f"option {name} needs a value"
                problem = _check_value(kind, value)
                if problem:
                    return f"{name}: {problem}"
            else:
                positional.append(word)
                i += 1
        if len(positional) != n_args:
            return f"'farm {' '.join(command)}' takes {n_args} argument(s), got {positional!r}"
        return None
    return f"unknown farm command: {' '.join(argv)!r}"


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _is_farm_service(service: dict) -> bool:
    build = service.get("build") or {}
    dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
    return dockerfile.startswith("deploy/Dockerfile")


def _image_cmd(dockerfile: str) -> list[str]:
    text = (DEPLOY / dockerfile).read_text()
    cmds = re.findall(r"^CMD\s+(\[.*\])\s*$", text, flags=re.M)
    assert cmds, f"{dockerfile} has no exec-form CMD"
    return json.loads(cmds[-1])


# --------------------------------------------------------------------------


def test_cli_checker_itself():
    assert cli_problem(["farm", "api", "--host", "0.0.0.0", "--port", "8000"]) is None
    assert cli_problem(["farm", "worker", "--name", "${FARM_WORKER_NAME:-gpu0}", "--vram-gb", "24"]) is None
    assert cli_problem(["farm", "models", "add", "sdxl", "owner/name", "--family", "sdxl"]) is None
    assert cli_problem(["farm", "users", "create", "admin", "--admin"]) is None
    assert cli_problem(["farm", "worker", "--gpus", "2"])
    assert cli_problem(["farm", "models", "add", "x", "owner/name", "--family", "sd9"])
    assert cli_problem(["farm", "api", "--port", "http"])
    assert cli_problem(["farm", "db", "migrate"])
    assert cli_problem(["celery", "worker"])


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_farm_service_runs_a_farm_cli_command(name):
    services = _load(name)["services"]
    farm_services = {key: svc for key, svc in services.items() if _is_farm_service(svc)}
    assert farm_services, f"{name} defines no farm service"
    for key, service in farm_services.items():
        command = service.get("command")
        if command is None:
            command = _image_cmd(service["build"]["dockerfile"])
        assert isinstance(command, list), f"{name}: {key}: use the exec (list) form for command"
        assert cli_problem([str(word) for word in command]) is None, f"{name}: {key}: {cli_problem(command)}"


def test_dockerfile_default_commands_are_farm_cli_commands():
    for dockerfile in ("Dockerfile", "Dockerfile.worker"):
        command = _image_cmd(dockerfile)
        assert cli_problem(command) is None, f"{dockerfile}: {cli_problem(command)}"


def test_only_known_farm_variables_are_used():
    for name in COMPOSE_FILES + [".env.example", "Dockerfile", "Dockerfile.worker", "README.md"]:
        used = set(re.findall(r"\bFARM_[A-Z0-9_]+\b", (DEPLOY / name).read_text()))
        unknown = used - FARM_VARIABLES
        assert not unknown, f"{name} uses FARM_ variables the farm does not read: {sorted(unknown)}"


def test_readme_commands_are_farm_cli_commands():
    text = (DEPLOY / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|yaml)\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#", 1)[0]
            for match in re.finditer(r"(?:^|\s)(farm\s+(?:db|api|scheduler|worker|users|models)\b[^\n]*)", line):
                commands.append(match.group(1).split())
            for match in re.finditer(r"\[\s*\"farm\".*?\]", line):
                commands.append(json.loads(match.group(0)))
    assert len(commands) >= 5
    for argv in commands:
        assert cli_problem(argv) is None, f"README: {' '.join(argv)}: {cli_problem(argv)}"


def test_main_compose_file_layout():
    compose = _load("docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "redis", "minio", "migrate", "api", "scheduler", "worker"} <= set(services)
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert services["minio"]["image"].startswith("minio/minio")

    # One environment, from the x-farm-env anchor, in every farm service.
    shared = compose["x-farm-env"]
    for key in ("FARM_DATABASE_URL", "FARM_BROKER_URL", "FARM_S3_ENDPOINT", "FARM_S3_ACCESS_KEY",
                "FARM_S3_SECRET_KEY", "FARM_S3_BUCKET", "FARM_SECRET_KEY"):
        assert key in shared
    assert shared["FARM_DATABASE_URL"].startswith("postgresql://")
    assert shared["FARM_BROKER_URL"].startswith("redis://")
    assert shared["FARM_S3_ENDPOINT"] == "http://minio:9000"
    for key in ("migrate", "api", "scheduler", "worker"):
        env = services[key]["environment"]
        assert isinstance(env, dict)
        assert {k: env[k] for k in shared} == shared, key

    # Healthchecks on what others wait for; start order by depends_on conditions.
    for key in ("postgres", "redis", "minio", "api"):
        assert services[key]["healthcheck"]["test"], key
    assert "healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for key in ("api", "scheduler", "worker"):
        depends = services[key]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", key
        for dep in ("postgres", "redis", "minio"):
            assert depends[dep]["condition"] == "service_healthy", (key, dep)
    for key, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, (key, dep)
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep] and not services[dep]["healthcheck"].get("disable"), (key, dep)

    assert any(str(port).endswith(":8000") for port in services["api"]["ports"])


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_metrics_ports_are_set_and_health_probes_use_them(name):
    """Scheduler and workers serve /metrics and /healthz/live on
    FARM_METRICS_PORT (none when unset); a healthcheck that probes a port the
    service does not serve would mark it unhealthy for ever."""
    from farm.settings import Settings

    services = _load(name)["services"]
    for key, service in services.items():
        if not _is_farm_service(service) or key in ("migrate", "api"):
            continue
        port = service["environment"].get("FARM_METRICS_PORT")
        assert port, f"{name}: {key} sets no FARM_METRICS_PORT"
        Settings(metrics_port=port)  # a valid port
        check = service.get("healthcheck")
        if check and not check.get("disable"):
            assert f"127.0.0.1:{port}/healthz/" in " ".join(check["test"]), (name, key)
    if "scheduler" in services:
        assert not services["scheduler"]["healthcheck"].get("disable")


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_worker_reserves_one_gpu_and_mounts_the_shared_model_cache(name):
    compose = _load(name)
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = worker["environment"]
    assert env["FARM_DEVICE"] == "cuda"
    cache = env["FARM_MODEL_CACHE"]
    mounts = [m for m in worker["volumes"] if isinstance(m, str) and m.split(":")[1] == cache]
    assert mounts, f"{name}: nothing mounted on FARM_MODEL_CACHE ({cache})"
    volume = mounts[0].split(":")[0]
    assert volume in (compose.get("volumes") or {}), f"{name}: {volume} is not a named volume"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_docker_stop_waits_longer_than_a_workers_grace(name):
    """docker stop sends SIGKILL after stop_grace_period: a worker must have
    had FARM_WORKER_GRACE_S and time to hand back and go offline."""
    from farm.settings import Settings

    worker = _load(name)["services"]["worker"]
    grace_s = float(worker["environment"].get("FARM_WORKER_GRACE_S", Settings.model_fields["worker_grace_s"].default))
    period = re.fullmatch(r"(\d+)(s|m)", str(worker["stop_grace_period"]))
    assert period, f"{name}: stop_grace_period {worker.get('stop_grace_period')!r} is not like 90s or 2m"
    period_s = int(period.group(1)) * (60 if period.group(2) == "m" else 1)
    assert period_s >= grace_s + 30, f"{name}: stop_grace_period {period_s}s leaves no time past the {grace_s}s grace"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_required_settings_are_in_env_example(name):
    text = (DEPLOY / name).read_text()
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))
    example = {line.split("=", 1)[0].strip() for line in (DEPLOY / ".env.example").read_text().splitlines()
               if "=" in line and not line.lstrip().startswith("#")}
    assert required, name
    assert not required - example, f"{name} requires variables missing from .env.example: {sorted(required - example)}"


def test_images_run_as_a_non_root_user():
    for dockerfile in ("Dockerfile", "Dockerfile.worker"):
        text = (DEPLOY / dockerfile).read_text()
        users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
        assert users and users[-1] not in ("root", "0"), dockerfile
    api = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM\s+\$\{PYTHON_IMAGE\}", api, flags=re.M)
    assert "python:3.11-slim" in api
    assert re.search(r"^HEALTHCHECK .*", api, flags=re.M) and "/healthz" in api
    assert "download.pytorch.org/whl/cpu" in api
    worker = (DEPLOY / "Dockerfile.worker").read_text()
    assert "nvidia/cuda:" in worker and "download.pytorch.org/whl/cu" in worker


def test_the_worker_image_installs_torchvision_for_its_torch_and_the_cuda_extra(tmp_path):
    """FLUX.2 [dev]'s processor needs torchvision, built for the image's torch;
    bitsandbytes (the nf4 and int8-bnb variants) comes with pyproject's cuda extra."""
    worker = (DEPLOY / "Dockerfile.worker").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", worker, flags=re.M))
    torch_minor = int(args["TORCH_VERSION"].split(".")[1])
    assert args["TORCHVISION_VERSION"].split(".")[:2] == ["0", str(torch_minor + 15)]
    assert re.search(r'pip install "torch==\$\{TORCH_VERSION\}" "torchvision==\$\{TORCHVISION_VERSION\}" '
                     r'--index-url "\$\{TORCH_INDEX_URL\}"', worker)
    # The image's requirements line, run on this checkout's pyproject.toml: the cuda extra is in it.
    snippet = re.search(r'RUN python -c "(import tomllib;[^"]+)"', worker).group(1)
    (tmp_path / "pyproject.toml").write_bytes((DEPLOY.parent / "pyproject.toml").read_bytes())
    listed = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout.split("\n")
    assert any(line.startswith("bitsandbytes") for line in listed)
    assert any(line.startswith("diffusers") for line in listed)
