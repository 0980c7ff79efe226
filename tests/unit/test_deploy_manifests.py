"""Offline checks of the Kubernetes manifests (deploy/k8s) and the Grafana
dashboard (deploy/grafana); no cluster, no daemon.

- Every built-in resource validates with kubernetes-validate against the
  Kubernetes API schemas it bundles (K8S_VERSION, strict: unknown fields are
  errors).
- The KEDA ScaledObjects validate against KEDA's ScaledObject schema, as
  generated from KEDA's CRD by the cloudcoil-models-keda package (KEDA_VERSION;
  Apache-2.0), closed the same way.
- Every metric a ScaledObject query or a dashboard expression names is one the
  farm exports (farm.metrics.exported_metric_names()); expressions are parsed
  with promql-parser, not searched with a pattern.
- Consistency a schema cannot see: grace periods, probe ports, FARM_ names
  and values, CLI commands, references between resources, pools and their
  triggers.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
from functools import lru_cache
from pathlib import Path

import click
import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from farm.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
# The oldest Kubernetes still in upstream support when this was written; the
# manifests use nothing newer (policy/v1, batch/v1, networking.k8s.io/v1).
K8S_VERSION = "1.33.0"
KEDA_VERSION = importlib.metadata.version("cloudcoil-models-keda")  # KEDA release + a package revision
FARM_VARIABLES = {f"FARM_{name.upper()}" for name in Settings.model_fields}
SETTINGS_DEFAULTS = {f"FARM_{name.upper()}": field.default for name, field in Settings.model_fields.items()}
# Past a worker's own grace: uploading the finished image, the fenced
# completion and going offline (the manifests state 60 s; less is refused).
STOP_MARGIN_S = 30


# ------------------------------------------------------------------ loading


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def _resources(files: list[Path] | None = None) -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in (files or _manifest_files()) for doc in _documents(path)]


def _by_kind(resources, kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in resources if doc["kind"] == kind}


def _resource_id(item) -> str:
    name, doc = item
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


def _pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def _env(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def _pool_deployments(resources) -> dict[str, dict]:
    return {name: doc for name, doc in _by_kind(resources, "Deployment").items()
            if any(c["name"] == "worker" for c in _pod_spec(doc)["containers"])}


def _scaled_objects(resources) -> dict[str, dict]:
    return _by_kind(resources, "ScaledObject")


# ------------------------------------------------------------------ checkers (return problems, so tests can break them)


def kubernetes_problems(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def _closed(schema):
    """Unknown fields are errors, as in kubernetes-validate's strict mode: a
    misspelt field would otherwise be dropped by the API server unseen."""
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_closed(value) for value in schema]
    return schema


@lru_cache(maxsize=1)
def keda_scaledobject_validator() -> jsonschema.Draft202012Validator:
    from cloudcoil.models.keda import v1alpha1

    schema = _closed(v1alpha1.ScaledObject.model_json_schema(by_alias=True, mode="validation"))
    # ObjectMeta is Kubernetes' own (checked for the other kinds); keep it open.
    schema["$defs"]["ObjectMeta"]["additionalProperties"] = True
    return jsonschema.Draft202012Validator(schema)


def keda_problems(doc: dict) -> list[str]:
    validator = keda_scaledobject_validator()
    problems = [f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}" for error in validator.iter_errors(doc)]
    if doc.get("apiVersion") != "keda.sh/v1alpha1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r} is not keda.sh/v1alpha1")
    return problems


def _grafana_to_promql(expr: str) -> str:
    """Grafana's template variables as values Prometheus would see."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (raises on bad PromQL)."""
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)

    promql_parser.walk(promql_parser.parse(_grafana_to_promql(expr)), visit)
    return names


def _label_values_metric(query: str) -> str | None:
    match = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", query)
    return match.group(1) if match else None


def dashboard_expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable."""
    found = []

    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            found.append((f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            metric = _label_values_metric(query)
            found.append((f"variable {variable['name']}", metric if metric else query))
    return found


def unexported_metrics(expressions) -> list[str]:
    from farm.metrics import exported_metric_names

    exported = exported_metric_names()
    problems = []
    for where, expr in expressions:
        try:
            names = metric_names(expr)
        except Exception as exc:  # promql-parser raises ValueError subclasses of its own
            problems.append(f"{where}: not PromQL ({exc}): {expr}")
            continue
        if not names:
            problems.append(f"{where}: names no metric: {expr}")
        problems += [f"{where}: {name} is not a metric the farm exports" for name in sorted(names - exported)]
    return problems


def _query_models(query: str) -> set[str]:
    """The model ids a trigger query's model=~"a|b" matchers name."""
    values = set(re.findall(r'model=~"([^"]*)"', query))
    assert len(values) == 1, f"a trigger query names its pool's models in one form, model=~\"a|b\": {query}"
    return set(values.pop().split("|"))


def pool_problems(resources) -> list[str]:
    """Worker pools and their ScaledObjects agree, and each pool is a GPU pool
    whose pods are given time to stop gracefully."""
    problems = []
    pools = _pool_deployments(resources)
    scaled = _scaled_objects(resources)
    if not pools:
        problems.append("no worker pool Deployment")
    seen_models: dict[str, str] = {}
    for name, deployment in pools.items():
        spec = _pod_spec(deployment)
        worker = next(c for c in spec["containers"] if c["name"] == "worker")
        env = _env(worker)
        if "FARM_WORKER_VRAM_GB" in env:
            problems.append(f"{name}: FARM_WORKER_VRAM_GB is set; on CUDA the worker measures the GPU")
        if env.get("FARM_DEVICE") != "cuda":
            problems.append(f"{name}: FARM_DEVICE is {env.get('FARM_DEVICE')!r}, not cuda")
        if str(worker.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")) != "1":
            problems.append(f"{name}: the worker's limits do not ask for nvidia.com/gpu: 1")
        if not spec.get("nodeSelector") and not spec.get("affinity", {}).get("nodeAffinity"):
            problems.append(f"{name}: no node selector for its GPU class")
        if "replicas" in deployment["spec"]:
            problems.append(f"{name}: sets replicas, which every kubectl apply would reset under KEDA")
        grace_s = float(env.get("FARM_WORKER_GRACE_S") or SETTINGS_DEFAULTS["FARM_WORKER_GRACE_S"])
        period_s = spec.get("terminationGracePeriodSeconds", 30)
        if period_s < grace_s + STOP_MARGIN_S:
            problems.append(f"{name}: terminationGracePeriodSeconds {period_s} < FARM_WORKER_GRACE_S {grace_s:g} + {STOP_MARGIN_S}")
        models = set((env.get("FARM_WORKER_MODELS") or "").split(",")) - {""}
        preload = set((env.get("FARM_WORKER_PRELOAD") or "").split(",")) - {""}
        if not models:
            problems.append(f"{name}: FARM_WORKER_MODELS is not set: the pool's trigger cannot name its models")
        if preload - models:
            problems.append(f"{name}: preloads {sorted(preload - models)}, which it does not serve")
        for model in models:
            if model in seen_models:
                problems.append(f"{name}: {model} is served by {seen_models[model]} too; its queue would scale both pools")
            seen_models[model] = name
        cache = env.get("FARM_MODEL_CACHE")
        mounts = [m["mountPath"] for m in worker.get("volumeMounts", [])]
        if not cache or not any(cache == path or cache.startswith(path.rstrip("/") + "/") for path in mounts):
            problems.append(f"{name}: no volume mounted over FARM_MODEL_CACHE ({cache})")
        targeting = [so for so in scaled.values() if so["spec"]["scaleTargetRef"]["name"] == name]
        if len(targeting) != 1:
            problems.append(f"{name}: {len(targeting)} ScaledObjects target it, not 1")
            continue
        so = targeting[0]
        if so["spec"].get("minReplicaCount", 1) != 0:
            problems.append(f"{so['metadata']['name']}: minReplicaCount is not 0 (scale to zero)")
        for trigger in so["spec"]["triggers"]:
            if trigger["type"] == "prometheus" and _query_models(trigger["metadata"]["query"]) != models:
                problems.append(f"{so['metadata']['name']}: its query names {sorted(_query_models(trigger['metadata']['query']))}, "
                                f"the pool serves {sorted(models)}")
    deployments = _by_kind(resources, "Deployment")
    for so_name, so in scaled.items():
        ref = so["spec"]["scaleTargetRef"]
        if ref.get("kind", "Deployment") != "Deployment" or ref["name"] not in deployments:
            problems.append(f"ScaledObject {so_name}: targets {ref.get('kind', 'Deployment')} {ref['name']!r}, which is not here")
    return problems


def _ports(container: dict) -> dict:
    ports = {}
    for port in container.get("ports", []):
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            ports[port["name"]] = port["containerPort"]
    return ports


PROBE_PATHS = {"startupProbe": "/healthz/live", "livenessProbe": "/healthz/live", "readinessProbe": "/healthz/ready"}


def probe_problems(resources) -> list[str]:
    problems = []
    for name, doc in _by_kind(resources, "Deployment").items():
        template = doc["spec"]["template"]
        for container in template["spec"]["containers"]:
            where = f"{name}/{container['name']}"
            ports = _ports(container)
            for kind, path in PROBE_PATHS.items():
                probe = container.get(kind)
                if probe is None:
                    if kind != "startupProbe":
                        problems.append(f"{where}: no {kind}")
                    continue
                get = probe.get("httpGet", {})
                if get.get("port") not in ports:
                    problems.append(f"{where}: {kind} port {get.get('port')!r} is not a port the container exposes")
                if get.get("path") != path:
                    problems.append(f"{where}: {kind} on {get.get('path')!r}, not {path}")
            metrics_port = _env(container).get("FARM_METRICS_PORT")
            if container["name"] != "api":
                if metrics_port is None or int(metrics_port) != ports.get("metrics"):
                    problems.append(f"{where}: FARM_METRICS_PORT {metrics_port!r} is not its 'metrics' port {ports.get('metrics')}")
            scrape_port = template["metadata"].get("annotations", {}).get("prometheus.io/port")
            if scrape_port is not None and int(scrape_port) not in ports.values():
                problems.append(f"{where}: prometheus.io/port {scrape_port} is not a port the container exposes")
    return problems


def variable_problems(files: list[Path] | None = None) -> list[str]:
    problems = []
    for path in files or _manifest_files():
        for name in sorted(set(re.findall(r"\bFARM_[A-Z0-9_]+\b", path.read_text())) - FARM_VARIABLES):
            problems.append(f"{path.name}: {name} is not a farm setting (farm.settings.Settings)")
    return problems


def settings_problems(resources) -> list[str]:
    """Each farm container's FARM_ values (ConfigMap, Secret, its own env) are
    values the farm accepts: the settings object builds from them."""
    from pydantic import ValidationError

    sources = {**{("ConfigMap", name): doc.get("data", {}) for name, doc in _by_kind(resources, "ConfigMap").items()},
               **{("Secret", name): doc.get("stringData", {}) for name, doc in _by_kind(resources, "Secret").items()}}
    problems = []
    for _, doc in resources:
        for container in _containers(doc):
            values: dict[str, str] = {}
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        values.update(sources.get((kind, source[key]["name"]), {}))
            values.update({name: value for name, value in _env(container).items() if value is not None})
            fields = {name[len("FARM_"):].lower(): value for name, value in values.items()
                      if name in FARM_VARIABLES}
            try:
                Settings(**fields)
            except ValidationError as exc:
                for error in exc.errors():
                    problems.append(f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}: "
                                    f"FARM_{'_'.join(map(str, error['loc'])).upper()}: {error['msg']}")
    return problems


def cli_problem(argv: list[str]) -> str | None:
    """None when argv parses as a command of the real `farm` CLI."""
    from farm.cli import main

    if argv[:1] != ["farm"]:
        return f"not a farm command: {argv!r}"
    try:
        context = main.make_context("farm", list(argv[1:]))
        command = main
        while isinstance(command, click.Group):
            name, command, rest = command.resolve_command(context, [*context._protected_args, *context.args])
            context = command.make_context(name, rest, parent=context)
    except click.ClickException as exc:
        return exc.format_message()
    return None


def _containers(doc: dict):
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec") if "template" in spec else None
    if pod is None:
        return []
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def reference_problems(resources) -> list[str]:
    problems = []
    names = {(doc["kind"], doc["metadata"]["name"]) for _, doc in resources}
    for _, doc in resources:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for container in _containers(doc):
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source and (kind, source[key]["name"]) not in names:
                        problems.append(f"{where}: {key} {source[key]['name']!r} does not exist")
            command = container.get("command") or []
            if command[:1] == ["farm"] and cli_problem(command):
                problems.append(f"{where}/{container['name']}: {' '.join(command)}: {cli_problem(command)}")
        if "template" in doc.get("spec", {}):
            for volume in doc["spec"]["template"]["spec"].get("volumes", []):
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                if claim and ("PersistentVolumeClaim", claim) not in names:
                    problems.append(f"{where}: volume claim {claim!r} does not exist")
    deployments = _by_kind(resources, "Deployment")
    services = _by_kind(resources, "Service")
    for name, service in services.items():
        selector = service["spec"]["selector"]
        matched = [d for d in deployments.values()
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        if not matched:
            problems.append(f"Service/{name}: its selector matches no Deployment's pods")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if not any(target in _ports(c) for d in matched for c in _pod_spec(d)["containers"]):
                problems.append(f"Service/{name}: targetPort {target!r} is no port of its pods")
    for name, ingress in _by_kind(resources, "Ingress").items():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = {p.get("name") for p in services.get(backend["name"], {}).get("spec", {}).get("ports", [])}
                if backend["name"] not in services or backend["port"].get("name") not in ports | {None}:
                    problems.append(f"Ingress/{name}: backend {backend} is not a Service port here")
    return problems


def disruption_problems(resources) -> list[str]:
    """The api, the scheduler and every worker pool have a PodDisruptionBudget."""
    problems = []
    budgets = _by_kind(resources, "PodDisruptionBudget").values()
    for name, deployment in _by_kind(resources, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        if len(covering) != 1:
            problems.append(f"Deployment/{name}: {len(covering)} PodDisruptionBudgets select its pods, not 1")
    return problems


def migration_problems(resources) -> list[str]:
    problems = []
    jobs = [doc for doc in _by_kind(resources, "Job").values()
            if any(c.get("command") == ["farm", "db", "upgrade"] for c in _containers(doc))]
    if len(jobs) != 1:
        problems.append(f"{len(jobs)} Jobs run 'farm db upgrade', not 1")
    for name, deployment in _by_kind(resources, "Deployment").items():
        init = _pod_spec(deployment).get("initContainers", [])
        if not any((c.get("command") or [])[:3] == ["farm", "db", "wait"] for c in init):
            problems.append(f"Deployment/{name}: no initContainer waits for the migrations ('farm db wait')")
    return problems


# ------------------------------------------------------------------ tests


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "farm"
    assert sorted(kustomization["resources"]) == sorted(path.name for path in _manifest_files())
    for _, doc in _resources():
        assert doc["metadata"].get("namespace", "farm") == "farm", _resource_id((_, doc))
    images = {image["name"] for image in kustomization["images"]}
    used = {c["image"] for _, doc in _resources() for c in _containers(doc)}
    assert used <= images, f"images not set by kustomization.yaml: {sorted(used - images)}"


@pytest.mark.parametrize("item", [item for item in _resources() if item[1]["kind"] != "ScaledObject"], ids=_resource_id)
def test_manifest_validates_against_the_kubernetes_api_schema(item):
    assert kubernetes_problems(item[1]) == []


def test_kubernetes_validation_catches_a_broken_manifest():
    deployment = copy.deepcopy(_by_kind(_resources(), "Deployment")["farm-scheduler"])
    deployment["spec"]["replicas"] = "two"
    assert kubernetes_problems(deployment)
    deployment = copy.deepcopy(_by_kind(_resources(), "Deployment")["farm-scheduler"])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    assert kubernetes_problems(deployment)


@pytest.mark.parametrize("name", sorted(_scaled_objects(_resources())))
def test_scaled_object_validates_against_kedas_schema(name):
    assert keda_problems(_scaled_objects(_resources())[name]) == []


def test_keda_validation_catches_a_broken_scaled_object():
    scaled = next(iter(_scaled_objects(_resources()).values()))
    typo = copy.deepcopy(scaled)
    typo["spec"]["minReplicas"] = typo["spec"].pop("minReplicaCount")
    assert keda_problems(typo)
    number = copy.deepcopy(scaled)
    number["spec"]["triggers"][0]["metadata"]["threshold"] = 2  # KEDA's trigger metadata is strings only
    assert keda_problems(number)
    no_target = copy.deepcopy(scaled)
    del no_target["spec"]["scaleTargetRef"]
    assert keda_problems(no_target)


def test_scaled_object_queries_name_exported_metrics():
    queries = [(f"ScaledObject {name}", trigger["metadata"]["query"])
               for name, so in _scaled_objects(_resources()).items()
               for trigger in so["spec"]["triggers"] if trigger["type"] == "prometheus"]
    assert queries
    assert unexported_metrics(queries) == []
    assert unexported_metrics([("made up", 'sum(farm_queue_depth{model=~"a"})')])
    assert unexported_metrics([("not PromQL", "sum(farm_queued_jobs{model=~")])


def test_worker_pools_match_their_triggers_and_stop_gracefully():
    resources = _resources()
    assert len(_pool_deployments(resources)) >= 2
    assert pool_problems(resources) == []


def test_pool_checks_catch_broken_pools():
    def broken(change) -> list[str]:
        resources = copy.deepcopy(_resources())
        pools = _pool_deployments(resources)
        change(resources, pools, _scaled_objects(resources))
        return pool_problems(resources)

    def worker(pool):
        return next(c for c in _pod_spec(pool)["containers"] if c["name"] == "worker")

    def set_env(pool, name, value):
        env = worker(pool)["env"]
        env[:] = [item for item in env if item["name"] != name] + [{"name": name, "value": value}]

    first = lambda pools: pools[sorted(pools)[0]]  # noqa: E731
    assert broken(lambda r, pools, so: _pod_spec(first(pools)).update(terminationGracePeriodSeconds=30))
    assert broken(lambda r, pools, so: set_env(first(pools), "FARM_WORKER_GRACE_S", "600"))
    assert broken(lambda r, pools, so: set_env(first(pools), "FARM_WORKER_VRAM_GB", "24"))
    assert broken(lambda r, pools, so: set_env(first(pools), "FARM_WORKER_MODELS", "some-other-model"))
    assert broken(lambda r, pools, so: worker(first(pools))["resources"]["limits"].pop("nvidia.com/gpu"))
    assert broken(lambda r, pools, so: next(iter(so.values()))["spec"].update(minReplicaCount=1))
    assert broken(lambda r, pools, so: next(iter(so.values()))["spec"]["scaleTargetRef"].update(name="workers-nope"))
    assert broken(lambda r, pools, so: first(pools)["spec"].update(replicas=1))
    pools = _pool_deployments(_resources())
    models = _env(worker(pools[sorted(pools)[0]]))["FARM_WORKER_MODELS"]
    assert broken(lambda r, pools, so: set_env(pools[sorted(pools)[1]], "FARM_WORKER_MODELS", models))


def test_probes_use_the_health_endpoints_on_exposed_ports():
    resources = _resources()
    assert probe_problems(resources) == []
    broken = copy.deepcopy(resources)
    scheduler = _by_kind(broken, "Deployment")["farm-scheduler"]
    scheduler["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = 9200
    assert probe_problems(broken)
    broken = copy.deepcopy(resources)
    pool = next(iter(_pool_deployments(broken).values()))
    worker = _pod_spec(pool)["containers"][0]
    worker["env"] = [{"name": "FARM_METRICS_PORT", "value": "9101"} if e["name"] == "FARM_METRICS_PORT" else e for e in worker["env"]]
    assert probe_problems(broken)


def test_only_farm_settings_are_configured(tmp_path):
    assert variable_problems() == []
    typo = tmp_path / "typo.yaml"
    typo.write_text("env:\n  - name: FARM_WORKER_MODEL\n    value: sdxl\n")
    assert variable_problems([typo])


def test_configured_values_are_accepted_by_the_settings():
    resources = _resources()
    assert settings_problems(resources) == []
    broken = copy.deepcopy(resources)
    _by_kind(broken, "ConfigMap")["farm-config"]["data"]["FARM_LOG_FORMAT"] = "xml"
    pool = next(iter(_pool_deployments(broken).values()))
    worker = _pod_spec(pool)["containers"][0]
    worker["env"] = [{"name": e["name"], "value": "fast"} if e["name"] == "FARM_WORKER_SPEED" else e for e in worker["env"]]
    problems = settings_problems(broken)
    assert any("FARM_LOG_FORMAT" in p for p in problems) and any("FARM_WORKER_SPEED" in p for p in problems)


def test_references_commands_and_budgets_hold_together():
    resources = _resources()
    assert reference_problems(resources) == []
    assert disruption_problems(resources) == []
    assert migration_problems(resources) == []
    broken = copy.deepcopy(resources)
    api = _by_kind(broken, "Deployment")["farm-api"]
    _pod_spec(api)["containers"][0]["command"] = ["farm", "api", "--listen", "0.0.0.0"]
    _pod_spec(api)["containers"][0]["envFrom"][0]["configMapRef"]["name"] = "farm-settings"
    _pod_spec(api)["initContainers"] = []
    problems = reference_problems(broken) + migration_problems(broken)
    assert any("--listen" in p for p in problems) and any("farm-settings" in p for p in problems)
    assert any("farm db wait" in p for p in problems)
    assert disruption_problems([item for item in resources if item[1]["kind"] != "PodDisruptionBudget"])


def test_scheduler_runs_two_replicas():
    deployment = _by_kind(_resources(), "Deployment")["farm-scheduler"]
    assert deployment["spec"]["replicas"] == 2
    assert _pod_spec(deployment)["containers"][0]["command"] == ["farm", "scheduler"]
    api = _by_kind(_resources(), "Deployment")["farm-api"]
    assert api["spec"]["replicas"] == 2


def test_secret_values_are_marked_placeholders():
    secret = _by_kind(_resources(), "Secret")["farm-secrets"]
    assert "data" not in secret
    for key, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, f"{key} looks like a real secret; commit placeholders only"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_names_exported_metrics(path):
    dashboard = json.loads(path.read_text())
    expressions = dashboard_expressions(dashboard)
    assert unexported_metrics(expressions) == []
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    # The questions the dashboard exists to answer.
    named = set().union(*(metric_names(expr) for _, expr in expressions))
    for metric in ("farm_queued_jobs", "farm_queue_wait_seconds_bucket", "farm_render_seconds_bucket",
                   "farm_model_load_seconds_bucket", "farm_worker_vram_used_bytes", "farm_images_failed_total",
                   "farm_scheduler_pass_seconds_bucket", "farm_scheduler_decision_seconds_bucket",
                   "farm_webhook_deliveries_total", "farm_http_request_duration_seconds_bucket"):
        assert metric in named, f"{path.name} has no panel on {metric}"
    quantiles = [expr for _, expr in expressions if "histogram_quantile" in expr]
    assert any("farm_queue_wait_seconds_bucket" in q for q in quantiles)
    assert any("farm_render_seconds_bucket" in q for q in quantiles)


def test_dashboard_check_catches_a_misnamed_metric():
    dashboard = json.loads(DASHBOARDS[0].read_text())
    dashboard["panels"][1]["targets"][0]["expr"] = "sum(rate(farm_renders_total[$__rate_interval]))"
    assert unexported_metrics(dashboard_expressions(dashboard))
