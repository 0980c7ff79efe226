"""The `farm` command line. Errors print one line, never a traceback."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from pathlib import Path

import click

from farm.families import family_names, renderer_names
from farm.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class CliError(click.ClickException):
    pass


def _setup_logging(settings: Settings) -> None:
    from farm.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)


def _announce(settings: Settings, text: str) -> None:
    """A long-running command's start-up line: plain on stdout, or a log
    record where every line must be JSON (FARM_LOG_FORMAT=json)."""
    if settings.log_format == "json":
        logger.info("%s", text)
    else:
        click.echo(text)


def _load_settings() -> Settings:
    from pydantic import ValidationError

    try:
        settings = get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"FARM_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise CliError(f"bad configuration: {problems}") from None
    _setup_logging(settings)
    from farm.quiet import quiet_libraries

    quiet_libraries(settings.log_level)
    return settings


def friendly_errors(command):
    """Turn the errors a user can fix into one-line messages."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from sqlalchemy.exc import OperationalError

        from farm.auth import UserExistsError
        from farm.hub import ModelDownloadError
        from farm.ports import AddressInUseError
        from farm.registry import RegistryError

        try:
            return command(*args, **kwargs)
        except (RegistryError, UserExistsError, ModelDownloadError, AddressInUseError, ValueError) as exc:
            raise CliError(str(exc)) from None
        except OperationalError as exc:
            raise CliError(f"cannot use the database ({str(exc.orig).strip().splitlines()[0]}); check FARM_DATABASE_URL and run 'farm db upgrade'") from None

    return wrapper


@click.group()
@click.version_option(package_name="farm")
def main() -> None:
    """farm: a distributed render farm for text-to-image diffusion."""


# ---------------------------------------------------------------------- processes


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port of the API and dashboard.")
@friendly_errors
def up(host: str, port: int) -> None:
    """Run an embedded farm: SQLite, a local store, a filesystem broker, one CPU worker and an offline demo model."""
    from farm.embedded import HomeInUseError, run_embedded

    try:
        run_embedded(_load_settings(), host, port)
    except HomeInUseError as exc:
        raise CliError(str(exc)) from None


@main.command()
@click.option("--host", default=None, help="Address to listen on [FARM_API_HOST].")
@click.option("--port", default=None, type=int, help="Port to listen on [FARM_API_PORT].")
@click.option("--processes", default=None, type=click.IntRange(1, 256), help="Server processes sharing the port [FARM_API_PROCESSES; default 1].")
@friendly_errors
def api(host: str | None, port: int | None, processes: int | None) -> None:
    """Serve the REST API and the dashboard."""
    settings = _load_settings()
    host, port, processes = host or settings.api_host, port or settings.api_port, processes or settings.api_processes
    if processes > 1:
        from farm.api.processes import serve_processes

        _announce(settings, f"farm api on http://{host}:{port}/ ({processes} processes)")
        serve_processes(settings, host, port, processes)
        return
    from farm.api import create_app
    from farm.api.server import make_server

    app = create_app(settings)
    _announce(settings, f"farm api on http://{host}:{port}/")
    make_server(app, app.extensions["farm"], host, port, settings.api_threads).run()


@main.command()
@friendly_errors
def scheduler() -> None:
    """Place queued jobs on workers (one active scheduler; others stand by)."""
    import signal
    import threading

    from farm.context import build_context
    from farm.scheduler.service import run_scheduler

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_scheduler(build_context(_load_settings()), stop)
    except KeyboardInterrupt:
        stop.set()


@main.command()
@click.option("--name", default=None, help="Worker id, unique in the farm [FARM_WORKER_NAME; default: host name].")
@click.option("--vram-gb", type=float, default=None, help="VRAM budget in GB [FARM_WORKER_VRAM_GB]; required on CPU, a cap on CUDA.")
@click.option("--models", default=None, help="Comma-separated model ids this worker serves [FARM_WORKER_MODELS].")
@click.option("--preload", default=None, help="Comma-separated model ids to load at start [FARM_WORKER_PRELOAD].")
@click.option("--ram-cache-gb", type=click.FloatRange(min=0), default=None,
              help="Host memory in GB that keeps models evicted from the GPU [FARM_WORKER_RAM_CACHE_GB; default 0, off].")
@click.option("--parent-pid", type=int, default=None, hidden=True, help="Stop when this process is gone (farm up's child).")
@friendly_errors
def worker(name: str | None, vram_gb: float | None, models: str | None, preload: str | None, ram_cache_gb: float | None,
           parent_pid: int | None) -> None:
    """Run a GPU (or CPU) worker consuming its own queue."""
    from farm.workers.main import run_worker

    settings = _load_settings()
    if parent_pid is not None:  # farm up's child
        from farm.lifeline import watch_parent
        from farm.quiet import quiet_celery_banner

        watch_parent(parent_pid, grace_s=settings.worker_grace_s + 15)
        quiet_celery_banner(settings.log_level)
    changes = {key: value for key, value in (("worker_models", models), ("worker_preload", preload)) if value}
    if ram_cache_gb is not None:
        changes["worker_ram_cache_gb"] = ram_cache_gb
    if changes:
        settings = Settings(**{**settings.model_dump(), **changes})
    run_worker(settings, name=name, vram_gb=vram_gb)


# ---------------------------------------------------------------------- database and users


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
@friendly_errors
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from farm.db import upgrade_database

    settings = _load_settings()
    upgrade_database(settings.resolved_database_url, revision)
    click.echo(f"database at {revision}")


@db.command("wait")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=600.0, show_default=True,
              help="Seconds to wait before giving up (exit 1).")
@friendly_errors
def db_wait(timeout_s: float) -> None:
    """Wait until the database schema is at this farm's migrations (run by a
    Kubernetes initContainer while the migration Job runs 'farm db upgrade')."""
    from farm.db import SchemaNotCurrentError, wait_for_schema

    try:
        wait_for_schema(_load_settings().resolved_database_url, timeout_s)
    except SchemaNotCurrentError as exc:
        raise CliError(str(exc)) from None
    click.echo("database schema is current")


@db.command("downgrade")
@click.argument("revision")
@friendly_errors
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' for an empty database)."""
    from farm.db import downgrade_database

    downgrade_database(_load_settings().resolved_database_url, revision)
    click.echo(f"database at {revision}")


@main.group()
def users() -> None:
    """Users and their tokens."""


def _context():
    from farm.context import build_context

    return build_context(_load_settings())


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an admin.")
@click.option("--team", default=None, help="Team to put the user in (created if missing).")
@click.option("--password", default=None, help="Password for dashboard sign-in.")
@friendly_errors
def users_create(name: str, admin: bool, team: str | None, password: str | None) -> None:
    """Create a user; prints the new API token alone on the last line."""
    from farm.auth import create_user

    ctx = _context()
    with ctx.db.transaction() as session:
        user, token = create_user(session, name, admin=admin, team=team, password=password)
    click.echo(f"created {'admin' if admin else 'member'} {name} (id {user.id}); API token:")
    click.echo(token)


@users.command("set-password")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@friendly_errors
def users_set_password(name: str, password: str) -> None:
    """Set a user's dashboard password; their dashboard sessions end."""
    from sqlalchemy import select

    from farm.auth import set_password
    from farm.models import User

    ctx = _context()
    with ctx.db.transaction() as session:
        user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
        if user is None:
            raise CliError(f"no user named {name!r}")
        ended = set_password(session, user, password)
    click.echo(f"password set for {name}; {ended} dashboard session{'s' if ended != 1 else ''} ended")


@main.group()
def shares() -> None:
    """Fair-share weights of users and teams."""


@shares.command("set")
@click.argument("weight", type=click.FloatRange(min=0.01, max=1000))
@click.option("--user", "user_name", default=None, help="User whose weight to set.")
@click.option("--team", "team_name", default=None, help="Team whose weight to set.")
@friendly_errors
def shares_set(weight: float, user_name: str | None, team_name: str | None) -> None:
    """Set a user's or a team's fair-share WEIGHT (1 = normal, 2 = twice the GPU time when both wait)."""
    from sqlalchemy import select

    from farm.models import Team, User

    if (user_name is None) == (team_name is None):
        raise CliError("name exactly one of --user or --team")
    model, name = (User, user_name) if user_name else (Team, team_name)
    ctx = _context()
    with ctx.db.transaction() as session:
        row = session.execute(select(model).where(model.name == name)).scalar_one_or_none()
        if row is None:
            raise CliError(f"no {'user' if user_name else 'team'} named {name!r}")
        row.share_weight = weight
    click.echo(f"{'user' if user_name else 'team'} {name} now has share weight {weight:g}")


@main.group()
def quotas() -> None:
    """Per-user and per-team quotas (admins)."""


def _quota_owner(session, user_name: str | None, team_name: str | None):
    from sqlalchemy import select

    from farm.models import Team, User

    if (user_name is None) == (team_name is None):
        raise CliError("name exactly one of --user or --team")
    model, name = (User, user_name) if user_name else (Team, team_name)
    row = session.execute(select(model).where(model.name == name)).scalar_one_or_none()
    if row is None:
        raise CliError(f"no {'user' if user_name else 'team'} named {name!r}")
    return ("user" if user_name else "team"), row


@quotas.command("set")
@click.option("--user", "user_name", default=None)
@click.option("--team", "team_name", default=None)
@click.option("--images-per-day", type=click.IntRange(min=0), default=None)
@click.option("--gpu-seconds-per-month", type=click.FloatRange(min=0), default=None)
@click.option("--max-concurrent-jobs", type=click.IntRange(min=0), default=None)
@click.option("--max-queued-jobs", type=click.IntRange(min=0), default=None,
              help="jobs that may wait to start (queued or assigned) at once")
@click.option("--max-pixels", type=click.IntRange(min=0), default=None)
@click.option("--max-steps", type=click.IntRange(min=0), default=None)
@friendly_errors
def quotas_set(user_name, team_name, **limits) -> None:
    """Replace the limits of one user or team; a limit left out is unlimited."""
    from farm.services.quotas import quota_view, set_quota
    from farm.spec import RequestError

    ctx = _context()
    with ctx.db.session() as session:
        owner, row = _quota_owner(session, user_name, team_name)
    try:
        quota = set_quota(ctx, owner, row.id, {k: v for k, v in limits.items() if v is not None})
    except RequestError as exc:  # a value past what the column holds
        raise CliError(str(exc)) from None
    click.echo(f"{owner} {row.name}: " + ", ".join(f"{k}={v if v is not None else 'unlimited'}" for k, v in quota_view(quota).items()))


@quotas.command("show")
@click.option("--user", "user_name", required=True)
@friendly_errors
def quotas_show(user_name: str) -> None:
    """A user's limits, usage and what remains."""
    from farm.services.quotas import me_report

    ctx = _context()
    with ctx.db.session() as session:
        _, user = _quota_owner(session, user_name, None)
        report = me_report(session, user)
    click.echo(json.dumps(report, indent=2, default=str))


@main.group()
def campaign() -> None:
    """Campaigns: many jobs submitted as one."""


@campaign.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rows", "rows_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A CSV or JSONL file of per-job overrides.")
@click.option("--dry-run", is_flag=True, help="Report the job count and cost; create nothing.")
@click.option("--deadline", default=None, help="When the campaign is due, ISO 8601 with a time zone "
                                               "(e.g. 2026-12-01T18:00:00Z); overrides the file's.")
@click.option("--api", "api_url", default=None, help="API base URL [FARM_API_URL].")
@click.option("--token", default=None, help="API token [FARM_API_TOKEN].")
def campaign_submit(file: Path, rows_file: Path | None, dry_run: bool, deadline: str | None, api_url, token) -> None:
    """Submit the campaign described by FILE (JSON or YAML: name, base, matrix, rows, ...)."""
    from farm.client import load_campaign_file

    base, token = _client_target(api_url, token)
    spec: Path | dict = file
    if deadline is not None:
        spec = {**load_campaign_file(file), "deadline": deadline}
    with _farm_client(base, token) as farm:
        result = farm.submit_campaign(spec, rows=rows_file, dry_run=True if dry_run else None)
    if dry_run:
        click.echo(f"{result.jobs} jobs, {result.cost.images} images, about {result.cost.gpu_seconds:.0f} GPU-seconds")
    else:
        click.echo(f"campaign {result.id}: {result.jobs} jobs queued")
        if result.webhook is not None:  # the farm shows the signing secret this once
            click.echo(f"webhook {result.webhook.url}: verify deliveries with the secret {result.webhook.secret}")


# ---------------------------------------------------------------------- workers


@main.group()
def workers() -> None:
    """Workers: list, drain, resume."""


@workers.command("list")
@friendly_errors
def workers_list() -> None:
    """List workers with state, VRAM and models held."""
    from sqlalchemy import select

    from farm.models import Worker, utcnow

    ctx = _context()
    with ctx.db.session() as session:
        rows = session.execute(select(Worker).order_by(Worker.id)).scalars().all()
    if not rows:
        click.echo("no workers have registered")
    now = utcnow()
    for w in rows:
        held = ",".join(m["id"] for m in w.loaded_models) or "-"
        in_ram = ",".join(m["id"] for m in w.host_models)
        click.echo(f"{w.id}\t{'draining' if w.draining and w.state == 'online' else w.state}\t{w.device_name}\t{w.vram_free_gb:.1f}/{w.vram_total_gb:.1f} GB free\t"
                   f"holds {held}" + (f"\tin host memory {in_ram}" if in_ram else "") + f"\theartbeat {(now - w.last_heartbeat_at).total_seconds():.0f}s ago"
                   + (f"\t{w.health_error}" if w.health_error else ""))


@workers.command("drain")
@click.argument("name")
@friendly_errors
def workers_drain(name: str) -> None:
    """Let NAME finish its current work and take no more."""
    _set_draining(name, True)


@workers.command("resume")
@click.argument("name")
@friendly_errors
def workers_resume(name: str) -> None:
    """Let a drained worker take work again."""
    _set_draining(name, False)


def _set_draining(name: str, draining: bool) -> None:
    from farm.services.jobs import ConflictError, NotFoundError
    from farm.services.workers import set_draining

    try:
        worker = set_draining(_context(), name, draining)
    except (NotFoundError, ConflictError) as exc:
        raise CliError(str(exc)) from None
    from farm.api.views import worker_state

    click.echo(f"worker {worker.id} is {worker_state(worker)}")


# ---------------------------------------------------------------------- models


@main.group()
def models() -> None:
    """The model registry."""


@models.command("list")
@friendly_errors
def models_list() -> None:
    """List registered models: id, family, base:variant, quantization, VRAM, steps, source, description."""
    from farm.quantization import describe as describe_quantization
    from farm.registry import list_models

    ctx = _context()
    with ctx.db.session() as session:
        rows = list_models(session)
    if not rows:
        click.echo("no models registered; add one with 'farm models add ID SOURCE'")
    for row in rows:
        variant = f"{row.base}:{row.variant}" if row.variant else "-"
        click.echo(f"{row.id}\t{row.family}\t{variant}\t{describe_quantization(row.quantization)}\t{row.vram_gb:.3f} GB\t"
                   f"{row.default_steps} steps\t{row.source}\t{row.description}")


@models.command("add")
@click.argument("model_id")
@click.argument("source")
@click.option("--family", type=click.Choice(family_names()), default=None, help="Pipeline family (read from a local folder when omitted).")
@click.option("--vram-gb", type=float, default=None, help="Estimated VRAM in GB (measured from local weights when omitted).")
@click.option("--revision", default=None, help="Hub revision to pin (branch, tag or commit).")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default=None, help="Weights dtype on CUDA.")
@click.option("--steps", "default_steps", type=int, default=None, help="Default steps for this model.")
@click.option("--description", default="", help="Free text shown in listings.")
@click.option("--variant", default=None, help="Variant name (e.g. schnell, dev); requests pick it with 'variant'.")
@click.option("--base", default=None, help="The model this is a variant of (default: the id without '-VARIANT').")
@click.option("--guidance", "default_guidance", type=float, default=None, help="Default guidance scale for this model.")
@click.option("--config", "config_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="For a single .safetensors checkpoint or a .gguf denoiser: a diffusers folder of the same family whose configs and tokenizers (and, for GGUF, other components) the import uses (offline).")
@click.option("--quantize", "quantize_at_load", type=click.Choice(["nf4", "int8-bnb", "int8"]), default=None,
              help="Register SOURCE's 16-bit weights as a quantized variant the worker quantizes while loading "
                   "(nf4 and int8-bnb need a CUDA worker). To write quantized files instead: farm models quantize.")
@friendly_errors
def models_add(model_id, source, family, vram_gb, revision, dtype, default_steps, description, variant, base,
               default_guidance, config_dir, quantize_at_load) -> None:
    """Register MODEL_ID from SOURCE: a local diffusers folder (prequantized ones included), a hub repo id, a single
    .safetensors checkpoint or a .gguf denoiser file (both imported into a folder under the model cache with --config)."""
    from farm.registry import add_model

    ctx = _context()
    file = Path(source).expanduser()
    if file.is_file() and file.suffix.lower() == ".gguf":
        if config_dir is None:
            raise CliError(f"{file} holds only a quantized denoiser; give --config, a diffusers folder of the same "
                           "family whose other components, configs and tokenizers the variant uses")
        source = str(_import_gguf(ctx, model_id, file, family, config_dir))
    elif file.is_file() and config_dir is not None:
        source = str(_import_checkpoint(ctx, model_id, file, family, config_dir))
    elif config_dir is not None:
        raise CliError("--config is for importing a single .safetensors checkpoint; SOURCE is not a file")
    with ctx.db.transaction() as session:
        entry = add_model(session, model_id, source, family=family, vram_gb=vram_gb, revision=revision, dtype=dtype,
                          description=description, default_steps=default_steps, base=base, variant=variant,
                          default_guidance=default_guidance, quantize_at_load=quantize_at_load)
    _say_registered(entry)


def _say_registered(entry) -> None:
    from farm.quantization import describe, needs_cuda

    as_variant = f", variant {entry.variant} of {entry.base}" if entry.variant else ""
    quantized = f", quantized {describe(entry.quantization)}" if entry.quantization else ""
    click.echo(f"registered {entry.id} ({entry.family}{as_variant}{quantized}, {entry.vram_gb:.3f} GB) from {entry.source}")
    if needs_cuda(entry.quantization):
        click.echo(f"note: {entry.quantization['format']} needs a CUDA GPU; only CUDA workers are given {entry.id}")


def _import_gguf(ctx, model_id: str, file: Path, family: str | None, config_dir: Path) -> Path:
    from farm.workers.quantize import import_gguf_file

    family, target = _import_target(ctx, model_id, family, config_dir)
    click.echo(f"importing {file} into {target} with the other components of {config_dir} ...")
    import_gguf_file(file, target, family, config_dir)
    return target


@models.command("quantize")
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(["int8", "gguf-q8_0", "gguf-q4_0", "nf4", "int8-bnb"]), required=True,
              help="int8: torchao int8 weight-only; gguf-q8_0/gguf-q4_0: a GGUF denoiser (these three run on CPUs and GPUs); "
                   "nf4, int8-bnb: bitsandbytes, CUDA only, quantized when a CUDA worker loads the variant.")
@click.option("--id", "model_id", required=True, help="The new variant's model id (e.g. flux-int8).")
@click.option("--variant", default=None, help="Its variant name [default: the format, or SOURCE's variant-FORMAT].")
@click.option("--base", default=None, help="The model it is a variant of [default: SOURCE's base, or SOURCE's id].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the quantized folder [default: the model cache/ID].")
@click.option("--description", default="", help="Free text shown in listings.")
@friendly_errors
def models_quantize(source: str, fmt: str, model_id: str, variant: str | None, base: str | None, out: Path | None,
                    description: str) -> None:
    """Make MODEL_ID, a quantized variant of SOURCE (a registered model id or a local diffusers folder): its
    quantized folder is written (unchanged components hard-linked) and registered with its own VRAM."""
    from sqlalchemy import select

    from farm.models import ModelEntry
    from farm.quantization import get_format
    from farm.registry import add_model, detect_family

    ctx = _context()
    with ctx.db.session() as session:
        if session.get(ModelEntry, model_id) is not None:
            raise CliError(f"model {model_id!r} is already registered")
        entry = session.get(ModelEntry, source)
    folder = Path(entry.source if entry is not None else source).expanduser()
    if not folder.is_dir():
        raise CliError(f"{source} is neither a registered model with a local folder nor a folder; "
                       "for a hub model run 'farm models pull' first")
    family = entry.family if entry is not None else detect_family(folder)
    if family is None:
        raise CliError(f"cannot tell the family of {folder}; register it first with 'farm models add ID {folder} --family F'")
    if entry is not None:
        base = base or entry.base or entry.id
        variant = variant or (f"{entry.variant}-{fmt}" if entry.variant else fmt)
    with ctx.db.session() as session:
        if base and variant and session.execute(select(ModelEntry.id).where(ModelEntry.base == base,
                                                                             ModelEntry.variant == variant)).scalar():
            raise CliError(f"{base} already has a variant {variant!r}; pass another --variant")
    if not get_format(fmt).writes_files:
        with ctx.db.transaction() as session:
            new = add_model(session, model_id, str(folder), family=family, description=description, base=base,
                            variant=variant, quantize_at_load=fmt)
        _say_registered(new)
        return
    from farm.workers.quantize import quantize_folder

    target = (out or ctx.settings.resolved_model_cache / model_id).expanduser()
    click.echo(f"quantizing {folder} as {fmt} into {target} ...")
    quantize_folder(folder, target, fmt, family, base=base, variant=variant)
    with ctx.db.transaction() as session:
        new = add_model(session, model_id, str(target), family=family, description=description, base=base, variant=variant)
    _say_registered(new)


def _import_target(ctx, model_id: str, family: str | None, config_dir: Path) -> tuple[str, Path]:
    """(family, folder under the model cache) of an import into a new model ``model_id``."""
    from farm.models import ModelEntry
    from farm.registry import detect_family

    with ctx.db.session() as session:
        if session.get(ModelEntry, model_id) is not None:
            raise CliError(f"model {model_id!r} is already registered")
    family = family or detect_family(config_dir)
    if family is None:
        raise CliError(f"cannot tell the family of {config_dir}: pass --family")
    return family, ctx.settings.resolved_model_cache / model_id


def _import_checkpoint(ctx, model_id: str, file: Path, family: str | None, config_dir: Path) -> Path:
    from farm.checkpoints import CheckpointError, import_single_file
    from farm.registry import pipeline_class_for

    family, target = _import_target(ctx, model_id, family, config_dir)
    click.echo(f"importing {file} into {target} with the configs of {config_dir} ...")
    try:
        return import_single_file(file, target, pipeline_class_for(family), config_dir)
    except CheckpointError as exc:
        raise CliError(str(exc)) from None


@models.command("remove")
@click.argument("model_id")
@click.option("--force", is_flag=True, help="Cancel the model's queued, assigned and running jobs (running renders stop at their next step).")
@friendly_errors
def models_remove(model_id: str, force: bool) -> None:
    """Take MODEL_ID out of the registry; finished jobs keep their history. Refused while unfinished jobs use it, unless --force."""
    from farm.registry import remove_model

    ctx = _context()
    with ctx.db.transaction() as session:
        canceled = remove_model(session, model_id, force=force)
    for job_id in canceled:
        ctx.events.job_changed(job_id)
    click.echo(f"removed {model_id}" + (f"; canceled {len(canceled)} unfinished job(s)" if canceled else "")
               + "; its files stay where they are")


@models.command("pull")
@click.argument("model_id")
@click.option("--endpoint", default=None, help="Hub endpoint [FARM_HUB_ENDPOINT; default: HF_ENDPOINT or the public hub].")
@friendly_errors
def models_pull(model_id: str, endpoint: str | None) -> None:
    """Download a hub model into the shared cache and record its revision and weights sha256."""
    from farm.hub import download_model
    from farm.models import ModelEntry

    ctx = _context()
    with ctx.db.session() as session:
        entry = session.get(ModelEntry, model_id)
    if entry is None:
        raise CliError(f"no model {model_id!r}; see 'farm models list'")
    if Path(entry.source).is_dir():
        raise CliError(f"model {model_id} is a local folder ({entry.source}); nothing to pull")
    result = download_model(entry.source, revision=entry.revision, cache_dir=ctx.settings.resolved_model_cache,
                            endpoint=endpoint or ctx.settings.hub_endpoint, token=ctx.settings.hub_token)
    from farm.modelcheck import folder_problems

    problems = folder_problems(Path(result.path))
    if problems:  # the repo itself is incomplete: no worker could load it
        raise CliError(f"{entry.source} at {result.revision} is not a loadable diffusers model: {'; '.join(problems)}; nothing recorded")
    with ctx.db.transaction() as session:
        row = session.get(ModelEntry, model_id)
        if row.weights_sha256 and row.weights_sha256 != result.weights_sha256:
            raise CliError(f"weights of {model_id} differ from the recorded sha256 {row.weights_sha256}; refusing")
        row.revision, row.weights_sha256, row.files = result.revision, result.weights_sha256, dict(result.files)
    click.echo(f"{model_id}: revision {result.revision}, weights sha256 {result.weights_sha256}, in {result.path}")


@models.command("tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--family", type=click.Choice(family_names()), default="sd", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--variant", default=None, help="flux: dev (guidance-distilled, the default) or schnell (few-step); "
                                             "flux2_klein: 4b (the default) or 9b (step-distilled), base-4b or base-9b.")
@click.option("--quantize", "fmt", type=click.Choice(["int8", "gguf-q8_0", "gguf-q4_0"]), default=None,
              help="Write it quantized in this format (as 'farm models quantize' would), for tests of quantized variants.")
@friendly_errors
def models_tiny(directory: Path, family: str, seed: int, variant: str | None, fmt: str | None) -> None:
    """Write a small random-weight pipeline to DIRECTORY (tests and the offline demo; its images are noise)."""
    import tempfile

    from farm.workers.tiny import write_tiny_model

    try:
        if fmt is None:
            path = write_tiny_model(directory, family=family, seed=seed, variant=variant)
        else:
            from farm.workers.quantize import quantize_folder

            with tempfile.TemporaryDirectory() as scratch:
                plain = write_tiny_model(Path(scratch) / "plain", family=family, seed=seed, variant=variant)
                quantize_folder(plain, directory, fmt, family)
            path = directory
    except ValueError as exc:
        raise CliError(str(exc)) from None
    quantized = f", quantized {fmt}" if fmt else ""
    click.echo(f"wrote a tiny random-weight {family}{' ' + variant if variant else ''} pipeline{quantized} to {path}")


@models.command("tiny-describe")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def models_tiny_describe(directory: Path, seed: int) -> None:
    """Write a small random-weight image-to-text model (BLIP) to DIRECTORY, for FARM_WORKER_DESCRIBE_MODEL in tests and the offline demo (its text is gibberish)."""
    from farm.workers.describe import write_tiny_describer

    path = write_tiny_describer(directory, seed=seed)
    click.echo(f"wrote a tiny random-weight image-to-text model to {path}")


@main.group()
def loras() -> None:
    """The LoRA registry: adapters requests apply with a weight."""


@loras.command("add")
@click.argument("lora_id")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--family", type=click.Choice(renderer_names()), required=True, help="Model family the LoRA was trained for.")
@click.option("--description", default="", help="Free text shown in listings.")
@friendly_errors
def loras_add(lora_id: str, source: Path, family: str, description: str) -> None:
    """Register LORA_ID from SOURCE: a folder with one .safetensors file, or the file."""
    from farm.loras import add_lora

    ctx = _context()
    with ctx.db.transaction() as session:
        entry = add_lora(session, lora_id, str(source), family=family, description=description)
    click.echo(f"registered LoRA {entry.id} ({entry.family}, sha256 {entry.weights_sha256[:12]}) from {entry.source}")


@loras.command("list")
@friendly_errors
def loras_list() -> None:
    """List registered LoRAs."""
    from farm.loras import list_loras

    ctx = _context()
    with ctx.db.session() as session:
        rows = list_loras(session)
    if not rows:
        click.echo("no LoRAs registered; add one with 'farm loras add ID SOURCE --family F'")
    for row in rows:
        click.echo(f"{row.id}\t{row.family}\t{row.weights_sha256[:12]}\t{row.source}\t{row.description}")


@loras.command("tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--family", type=click.Choice(renderer_names()), default="sd", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def loras_tiny(directory: Path, family: str, seed: int) -> None:
    """Write a random LoRA for the tiny FAMILY pipeline to DIRECTORY (tests and the demo)."""
    from farm.workers.tiny import write_tiny_lora

    path = write_tiny_lora(directory, family=family, seed=seed)
    click.echo(f"wrote a tiny random {family} LoRA to {path}")


# ---------------------------------------------------------------------- client


def _client_target(api_url: str | None, token: str | None) -> tuple[str, str]:
    settings = get_settings()
    home = settings.home
    api_url = api_url or os.environ.get("FARM_API_URL") or _read(home / "api-url") or f"http://{settings.api_host}:{settings.api_port}"
    token = token or os.environ.get("FARM_API_TOKEN") or _read(home / "token")
    if not token:
        raise CliError("no API token: pass --token, set FARM_API_TOKEN, or run 'farm up' (which saves one)")
    return api_url.rstrip("/"), token


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


@main.command()
@click.argument("prompt")
@click.option("--model", default=None, help="Model id (default: the farm's default).")
@click.option("--negative", "negative_prompt", default=None, help="Negative prompt.")
@click.option("--width", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--steps", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--sampler", default=None)
@click.option("--guidance", "guidance_scale", type=float, default=None)
@click.option("--images", "num_images", type=int, default=None)
@click.option("--format", "output_format", type=click.Choice(["png", "jpeg", "webp"]), default=None)
@click.option("--deadline", default=None, help="When the image is due, ISO 8601 with a time zone (e.g. 2026-12-01T18:00:00Z).")
@click.option("--wait", is_flag=True, help="Wait for the job and download its images.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True, help="Where --wait saves images.")
@click.option("--api", "api_url", default=None, help="API base URL [FARM_API_URL].")
@click.option("--token", default=None, help="API token [FARM_API_TOKEN].")
def submit(prompt, model, negative_prompt, width, height, steps, seed, sampler, guidance_scale, num_images, output_format,
           deadline, wait, out, api_url, token) -> None:
    """Submit one generation job."""
    base, token = _client_target(api_url, token)
    fields = dict(model=model, negative_prompt=negative_prompt, width=width, height=height, steps=steps, seed=seed,
                  sampler=sampler, guidance_scale=guidance_scale, num_images=num_images, output_format=output_format,
                  deadline=deadline)
    with _farm_client(base, token) as farm:
        job = farm.submit(prompt=prompt, **{k: v for k, v in fields.items() if v is not None})
        click.echo(f"job {job.id} {job.status}")
        if not wait:
            return
        state = farm.wait(job.id, poll_s=10, on_update=lambda view: click.echo(
            f"  {view.status} {view.progress.percent:.0f}%", err=True))
        out.mkdir(parents=True, exist_ok=True)
        for output in state.outputs:
            click.echo(str(farm.download_to(output, out / f"farm-{job.id}-{output.index}")))


@contextlib.contextmanager
def _farm_client(base: str, token: str):
    """A farm.client session whose errors print as one line: the farm's message, or how to reach it."""
    from farm.client import Farm, FarmError, Unreachable

    try:
        with Farm(base, token, timeout=30) as farm:
            yield farm
    except Unreachable:
        raise CliError(f"cannot reach the farm at {base}; is 'farm up' or 'farm api' running?") from None
    except FarmError as exc:
        raise CliError(str(exc)) from None


from farm.scheduler.bench import bench as _bench_group  # noqa: E402

main.add_command(_bench_group)


from farm.tokens_cli import tokens as _tokens_group  # noqa: E402

main.add_command(_tokens_group)


from farm.sessions_cli import sessions as _sessions_group  # noqa: E402

main.add_command(_sessions_group)


if __name__ == "__main__":
    main()
