#!/usr/bin/env python3
"""Static checks behind swarm/check.sh (stdlib + PyYAML only, no Docker engine needed).

    checks.py parse                        every JSON/YAML file under swarm/ traefik/ observability/
    checks.py stacks RENDERED_DIR          policy on the `docker stack config` output of each layer
    checks.py routing RENDERED_DIR         Traefik labels vs. the dynamic middleware file
    checks.py dashboards                   datasource uids, panel ids, generated JSON up to date
    checks.py metrics                      dashboard/rule metric names vs. observability/metrics.txt

Each command prints what it found and exits 1 on any problem.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKED_DIRS = ("swarm", "traefik", "observability")
STACK_DIR = os.path.join(ROOT, "swarm", "stack")
# Services whose image has no shell or HTTP client for a Docker healthcheck; Prometheus `up`
# alerts cover them instead (see the comments in the stack file).
NO_HEALTHCHECK_OK = {"tempo", "alloy"}
# Environment variable names that must never carry a literal value.
SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY|API_KEY|CREDENTIALS?)$")
CREDENTIAL_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# Middlewares that break or pointlessly wrap a WebSocket upgrade.
WS_FORBIDDEN_MIDDLEWARE_TYPES = {"compress", "retry", "buffering"}
METRIC_PREFIX = re.compile(r"^(resgate|booking|reports|identity|res_service|nats|gnatsd|process)_")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                   "bool", "and", "or", "unless", "le"}

problems = []


def problem(message):
    problems.append(message)
    print(f"  FAIL {message}")


def finish(label):
    if problems:
        print(f"{label}: {len(problems)} problem(s)")
        sys.exit(1)
    print(f"{label}: ok")


def rel(path):
    return os.path.relpath(path, ROOT)


def walk_files(extensions):
    for top in CHECKED_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d not in ("target", "node_modules", ".git")]
            for name in sorted(filenames):
                if name.endswith(extensions):
                    yield os.path.join(dirpath, name)


# ---------------------------------------------------------------------------------------------
def cmd_parse():
    count = 0
    for path in walk_files((".json",)):
        count += 1
        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except (ValueError, OSError) as err:
            problem(f"{rel(path)}: invalid JSON: {err}")
    for path in walk_files((".yml", ".yaml")):
        count += 1
        try:
            with open(path, encoding="utf-8") as f:
                list(yaml.safe_load_all(f))
        except (yaml.YAMLError, OSError) as err:
            problem(f"{rel(path)}: invalid YAML: {err}")
    print(f"parsed {count} JSON/YAML files")
    finish("parse")


# ---------------------------------------------------------------------------------------------
def load_rendered(rendered_dir):
    stacks = {}
    for name in sorted(os.listdir(rendered_dir)):
        if name.endswith(".yml"):
            with open(os.path.join(rendered_dir, name), encoding="utf-8") as f:
                stacks[name[:-4]] = yaml.safe_load(f)
    if not stacks:
        problem(f"no rendered stack files in {rendered_dir}")
    return stacks


def load_raw_stack(layer):
    with open(os.path.join(STACK_DIR, f"{layer}.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def check_service(layer, name, svc):
    where = f"{layer}.yml: service {name}"
    image = svc.get("image", "")
    tag = image.rsplit("/", 1)[-1]
    if ":" not in tag and "@sha256:" not in image:
        problem(f"{where}: image {image!r} has no tag")
    elif tag.endswith(":latest"):
        problem(f"{where}: image {image!r} uses the latest tag")

    deploy = svc.get("deploy") or {}
    if deploy.get("mode") != "global" and "replicas" not in deploy:
        problem(f"{where}: no deploy.replicas (and not mode: global)")
    limits = (deploy.get("resources") or {}).get("limits") or {}
    if not limits.get("cpus") or not limits.get("memory"):
        problem(f"{where}: deploy.resources.limits needs cpus and memory")
    for key in ("update_config", "rollback_config", "restart_policy"):
        if key not in deploy:
            problem(f"{where}: deploy.{key} missing")
    if "healthcheck" not in svc and name not in NO_HEALTHCHECK_OK:
        problem(f"{where}: no healthcheck")
    if "logging" not in svc:
        problem(f"{where}: no logging options (log rotation)")
    if "stop_grace_period" not in svc:
        problem(f"{where}: no stop_grace_period")

    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    for key, value in env.items():
        if SECRET_ENV.search(key):
            problem(f"{where}: environment {key} looks secret; use a Docker secret and {key}_FILE")
        if value and CREDENTIAL_URL.search(str(value)):
            problem(f"{where}: environment {key} contains credentials in a URL")


def cmd_stacks(rendered_dir):
    rendered = load_rendered(rendered_dir)
    owners = {}
    networks = {}
    external_inputs_strict = os.environ.get("CHECK_EXTERNAL_INPUTS") == "1"
    for layer, doc in rendered.items():
        for name, svc in (doc.get("services") or {}).items():
            if name in owners:
                problem(f"service {name} is defined in both {owners[name]}.yml and {layer}.yml")
            owners[name] = layer
            check_service(layer, name, svc)
        for name, secret in (doc.get("secrets") or {}).items():
            if not secret.get("external"):
                problem(f"{layer}.yml: secret {name} must be external (created by deploy.sh)")
        raw = load_raw_stack(layer)
        for name, cfg in (raw.get("configs") or {}).items():
            path = os.path.normpath(os.path.join(STACK_DIR, cfg.get("file", "")))
            if not os.path.isfile(path):
                inside = rel(path).split(os.sep)[0] in CHECKED_DIRS
                if inside or external_inputs_strict:
                    problem(f"{layer}.yml: config {name} file {rel(path)} does not exist")
                else:
                    print(f"  WARN {layer}.yml: config {name} file {rel(path)} does not exist yet "
                          "(owned outside swarm/ traefik/ observability/; CHECK_EXTERNAL_INPUTS=1 makes this fatal)")
            if "${" not in str(cfg.get("name", "")):
                problem(f"{layer}.yml: config {name} needs a versioned name (configs are immutable)")
        for name, net in (raw.get("networks") or {}).items():
            if name in networks and networks[name][1] != net:
                problem(f"network {name} differs between {networks[name][0]}.yml and {layer}.yml")
            networks.setdefault(name, (layer, net))
            if (net or {}).get("driver") != "overlay":
                problem(f"{layer}.yml: network {name} must be an overlay network")
    print(f"checked {len(owners)} services in {len(rendered)} layers, {len(networks)} networks")
    finish("stacks")


# ---------------------------------------------------------------------------------------------
def cmd_routing(rendered_dir):
    rendered = load_rendered(rendered_dir)
    with open(os.path.join(ROOT, "traefik", "dynamic", "middlewares.yml"), encoding="utf-8") as f:
        file_middlewares = yaml.safe_load(f)["http"]["middlewares"]

    def expand(name, seen=()):
        """Middleware types a file middleware resolves to, following chains."""
        if name in seen:
            problem(f"middleware chain loop at {name}")
            return set()
        spec = file_middlewares.get(name)
        if spec is None:
            problem(f"middleware {name}@file is not defined in traefik/dynamic/middlewares.yml")
            return set()
        if "chain" in spec:
            types = set()
            for member in spec["chain"]["middlewares"]:
                types |= expand(member, seen + (name,))
            return types
        return set(spec)

    # Middlewares defined by labels anywhere in the stack (usable as <name>@swarm).
    label_middlewares = set()
    for doc in rendered.values():
        for svc in (doc.get("services") or {}).values():
            for key in ((svc.get("deploy") or {}).get("labels")) or {}:
                if key.startswith("traefik.http.middlewares."):
                    label_middlewares.add(key.split(".")[3])

    routers = 0
    for layer, doc in rendered.items():
        for svc_name, svc in (doc.get("services") or {}).items():
            labels = ((svc.get("deploy") or {}).get("labels")) or {}
            if labels.get("traefik.enable") == "true" and "traefik.swarm.network" not in labels:
                problem(f"{layer}.yml: {svc_name} is routed but has no traefik.swarm.network label")
            for key, value in labels.items():
                match = re.fullmatch(r"traefik\.http\.routers\.([^.]+)\.rule", key)
                if not match:
                    continue
                routers += 1
                router, rule = match.group(1), value
                middlewares = labels.get(f"traefik.http.routers.{router}.middlewares", "")
                if not middlewares:
                    problem(f"{layer}.yml: router {router} has no middlewares (use a *-chain@file)")
                types = set()
                for ref in filter(None, (m.strip() for m in middlewares.split(","))):
                    if ref.endswith("@file"):
                        types |= expand(ref[:-5])
                    elif ref.split("@")[0] not in label_middlewares:
                        problem(f"{layer}.yml: router {router} uses undefined middleware {ref}")
                service = labels.get(f"traefik.http.routers.{router}.service")
                if not service or f"traefik.http.services.{service}.loadbalancer.server.port" not in labels:
                    problem(f"{layer}.yml: router {router} must name a service with a server port label")
                if "/ws" in rule:
                    bad = types & WS_FORBIDDEN_MIDDLEWARE_TYPES
                    if bad:
                        problem(f"{layer}.yml: WebSocket router {router} must not use {sorted(bad)}")
                    if any(k.startswith(f"traefik.http.services.{service}.loadbalancer.sticky") for k in labels):
                        problem(f"{layer}.yml: WebSocket router {router} must not be sticky")
                if not rule.startswith("Host("):
                    problem(f"{layer}.yml: router {router} rule should start with Host(...): {rule}")
    print(f"checked {routers} routers against {len(file_middlewares)} file middlewares")
    finish("routing")


# ---------------------------------------------------------------------------------------------
def dashboard_paths():
    folder = os.path.join(ROOT, "observability", "grafana", "dashboards")
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".json")]


def iter_panels(panels):
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def cmd_dashboards():
    with open(os.path.join(ROOT, "observability", "grafana", "provisioning", "datasources",
                           "datasources.yml"), encoding="utf-8") as f:
        uids = {ds["uid"] for ds in yaml.safe_load(f)["datasources"]}
    dashboard_uids = set()
    for path in dashboard_paths():
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
        if dash.get("uid") in dashboard_uids:
            problem(f"{rel(path)}: duplicate dashboard uid {dash.get('uid')}")
        dashboard_uids.add(dash.get("uid"))
        ids = set()
        for panel in iter_panels(dash.get("panels", [])):
            if panel.get("id") in ids:
                problem(f"{rel(path)}: duplicate panel id {panel.get('id')}")
            ids.add(panel.get("id"))
            for obj in [panel] + panel.get("targets", []):
                ds = obj.get("datasource")
                if isinstance(ds, dict) and ds.get("uid") not in uids:
                    problem(f"{rel(path)}: panel {panel.get('title')!r} uses unknown datasource uid {ds.get('uid')}")
                if isinstance(ds, str):
                    problem(f"{rel(path)}: panel {panel.get('title')!r} names a datasource instead of its uid")
    # The JSON must be exactly what the generator produces.
    generator = os.path.join(ROOT, "observability", "grafana", "dashboards.py")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, generator, tmp], check=True)
        for path in dashboard_paths():
            fresh = os.path.join(tmp, os.path.basename(path))
            if not os.path.exists(fresh):
                problem(f"{rel(path)}: not produced by dashboards.py")
                continue
            with open(path, encoding="utf-8") as a, open(fresh, encoding="utf-8") as b:
                if a.read() != b.read():
                    problem(f"{rel(path)}: differs from dashboards.py output; run python3 {rel(generator)}")
        for name in os.listdir(tmp):
            if not os.path.exists(os.path.join(os.path.dirname(dashboard_paths()[0]), name)):
                problem(f"dashboards.py produces {name}, which is not committed")
    print(f"checked {len(dashboard_uids)} dashboards against datasource uids {sorted(uids)}")
    finish("dashboards")


# ---------------------------------------------------------------------------------------------
def promql_metric_names(expr):
    """Metric-like identifiers with one of our prefixes in a PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"'(?:[^'\\]|\\.)*'", "''", expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for token in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if token not in PROMQL_KEYWORDS and METRIC_PREFIX.match(token):
            names.add(token)
    return names


def queried_metrics():
    """(name, where) for every metric a dashboard or rule queries through Prometheus."""
    found = []
    for path in dashboard_paths():
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
        for var in dash.get("templating", {}).get("list", []):
            query = var.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            if query and (var.get("datasource") or {}).get("type") == "prometheus":
                found += [(n, f"{rel(path)} variable {var.get('name')}") for n in promql_metric_names(query)]
        for panel in iter_panels(dash.get("panels", [])):
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel.get("datasource") or {}
                if ds.get("type", "prometheus") == "prometheus" and target.get("expr"):
                    found += [(n, f"{rel(path)} panel {panel.get('title')!r}")
                              for n in promql_metric_names(target["expr"])]
    rules_dir = os.path.join(ROOT, "observability", "prometheus", "rules")
    for name in sorted(os.listdir(rules_dir)):
        path = os.path.join(rules_dir, name)
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                label = rule.get("alert") or rule.get("record")
                found += [(n, f"{rel(path)} rule {label}") for n in promql_metric_names(rule["expr"])]
    return found


def load_contract():
    path = os.path.join(ROOT, "observability", "metrics.txt")
    names = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line):
                    problem(f"observability/metrics.txt: not a metric name: {line!r}")
                names.add(line)
    return names


def base_name(name, contract):
    if name in contract:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in contract:
            return name[: -len(suffix)]
    return None


def rust_sources():
    for top in ("resgate-rs", "services", "identity"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d not in ("target", "node_modules")]
            for name in filenames:
                if name.endswith(".rs"):
                    yield os.path.join(dirpath, name)


def cmd_metrics():
    contract = load_contract()
    queried = queried_metrics()
    resolved = set()
    for name, where in queried:
        if name.startswith("process_"):
            continue  # standard process collector metrics
        base = base_name(name, contract)
        if base is None:
            problem(f"{where} queries {name}, which observability/metrics.txt does not list")
        else:
            resolved.add(base)
    unused = sorted(n for n in contract - resolved if not n.startswith("gnatsd_"))
    if unused:
        print(f"  note: contract metrics no dashboard or alert uses yet: {', '.join(unused)}")
    if os.environ.get("CHECK_METRICS_IN_CODE") == "1":
        sources = list(rust_sources())
        text = ""
        for path in sources:
            with open(path, encoding="utf-8", errors="replace") as f:
                text += f.read()
        for name in sorted(resolved):
            if name.startswith("gnatsd_"):
                continue  # exported by natsio/prometheus-nats-exporter, not our code
            # prometheus-client (OpenMetrics) registers counters without _total and info
            # metrics without _info and appends the suffix when encoding: accept either form.
            accepted = {name} | {name[: -len(sfx)] for sfx in ("_total", "_info") if name.endswith(sfx)}
            if not any(f'"{form}"' in text for form in accepted):
                problem(f"{name} is queried but no *.rs file under resgate-rs/ services/ identity/ "
                        f"has the string literal \"{name}\" ({len(sources)} files searched)")
    print(f"{len(queried)} metric references, {len(resolved)} distinct metrics, all in the contract"
          if not problems else f"{len(queried)} metric references checked")
    finish("metrics")


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    command, args = sys.argv[1], sys.argv[2:]
    commands = {"parse": cmd_parse, "stacks": cmd_stacks, "routing": cmd_routing,
                "dashboards": cmd_dashboards, "metrics": cmd_metrics}
    if command not in commands:
        print(__doc__)
        sys.exit(2)
    commands[command](*args)


if __name__ == "__main__":
    main()
