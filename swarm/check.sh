#!/usr/bin/env bash
# Checks swarm/, traefik/ and observability/ without a Docker engine:
#
#   - `docker stack config` renders every layer file (with the example settings), alone and
#     all together, and the rendered stacks follow the deployment policy (pinned images,
#     replicas, limits, update/rollback/restart, healthchecks, external secrets, no secrets in
#     environment literals, versioned configs, consistent networks);
#   - Traefik routers only use defined middlewares, and the WebSocket router none that breaks
#     the upgrade;
#   - shellcheck on every shell script; deploy.sh --dry-run runs end to end;
#   - promtool check config / check rules / test rules; amtool check-config;
#   - every JSON and YAML file parses; dashboards use provisioned datasource uids and match
#     their generator;
#   - every metric a dashboard or alert queries is in observability/metrics.txt, and with
#     CHECK_METRICS_IN_CODE=1 also a string literal in the Rust sources.
#
# Needs: docker (client only), shellcheck, promtool, python3 with PyYAML; amtool optional.
# Prints one line per check and `swarm checks: N passed, M failed`; exits 1 on any failure.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
cd "$repo_root"

passed=0
failed=0
failures=()
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# check NAME COMMAND...: runs the command, records pass/fail, shows output only on failure.
check() {
  local name=$1
  shift
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1))
    printf 'ok    %s\n' "$name"
    # Warnings do not fail a check but must stay visible.
    grep -E '^[[:space:]]*WARN' "$work/out" | sed 's/^[[:space:]]*/      /' || true
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      /' "$work/out"
  fi
}

have() {
  command -v "$1" >/dev/null 2>&1
}

# ---- tools ------------------------------------------------------------------------------------
require_tools() {
  local missing=() tool
  for tool in docker shellcheck promtool python3; do
    have "$tool" || missing+=("$tool")
  done
  if ((${#missing[@]} > 0)); then
    echo "missing tools: ${missing[*]} (Debian/Ubuntu: apt-get install shellcheck prometheus python3-yaml; docker CLI)"
    return 1
  fi
  python3 -c 'import yaml' || {
    echo "python3 cannot import yaml (apt-get install python3-yaml)"
    return 1
  }
}
check "tools present (docker, shellcheck, promtool, python3+yaml)" require_tools
if ((failed > 0)); then
  echo "swarm checks: $passed passed, $failed failed"
  exit 1
fi

# ---- stack files ------------------------------------------------------------------------------
layers=(data observability identity app edge)

# The settings deploy.sh would export, from the example config, so `${VAR:?}` references
# resolve exactly as in a real deploy.
stack_environment() {
  local line key value
  while IFS= read -r line; do
    [[ $line =~ ^([A-Z_][A-Z0-9_]*)=(.*)$ ]] || continue
    key=${BASH_REMATCH[1]}
    value=${BASH_REMATCH[2]}
    [[ $key == SECRET_FILE_* ]] && continue
    export "$key=$value"
  done <swarm/deploy.conf.example
  export IMAGE_TAG=check
  local layer
  for layer in "${layers[@]}"; do
    export "${layer^^}_CONFIG_VERSION=check"
  done
}
stack_environment

render_layer() {
  local layer=$1
  # Unset variables would silently become empty strings; treat the warning as an error.
  docker stack config -c "swarm/stack/$layer.yml" >"$work/rendered/$layer.yml" 2>"$work/render.err" || {
    cat "$work/render.err"
    return 1
  }
  if grep -qiE 'warn|not set' "$work/render.err"; then
    cat "$work/render.err"
    return 1
  fi
}

mkdir -p "$work/rendered"
for layer in "${layers[@]}"; do
  check "docker stack config swarm/stack/$layer.yml" render_layer "$layer"
done

render_all() {
  local args=() layer
  for layer in "${layers[@]}"; do
    args+=(-c "swarm/stack/$layer.yml")
  done
  docker stack config "${args[@]}" >/dev/null
}
check "docker stack config, all layers merged into one stack" render_all
check "stack policy (images, replicas, limits, update/rollback, health, secrets, configs, networks)" \
  python3 swarm/checks.py stacks "$work/rendered"
check "Traefik routing labels vs traefik/dynamic middlewares (no compress/retry/buffering on /ws)" \
  python3 swarm/checks.py routing "$work/rendered"

# ---- shell ------------------------------------------------------------------------------------
shell_scripts() {
  # *.sh files plus extension-less files with a shell shebang.
  find swarm traefik observability -type d \( -name target -o -name node_modules \) -prune -o \
    -type f -print | sort | while read -r file; do
    if [[ $file == *.sh ]] || head -n 1 "$file" | grep -qE '^#!.*\b(ba|da|k)?sh\b'; then
      printf '%s\n' "$file"
    fi
  done
}
mapfile -t scripts < <(shell_scripts)
run_shellcheck() {
  ((${#scripts[@]} > 0)) || return 0
  shellcheck --external-sources "${scripts[@]}"
}
check "shellcheck (${#scripts[@]} scripts)" run_shellcheck

dry_run_deploy() {
  local only="data,observability,identity,app,edge"
  # The realm file belongs to the identity work; without it the identity layer cannot deploy.
  if [[ ! -f identity/keycloak/realm-booking.json ]]; then
    only="data,observability,app,edge"
  fi
  bash swarm/deploy.sh --config swarm/deploy.conf.example --dry-run --only "$only" >"$work/dry-run.out"
  grep -q '^+ docker stack deploy' "$work/dry-run.out"
}
check "swarm/deploy.sh --dry-run with deploy.conf.example" dry_run_deploy

# ---- Prometheus and Alertmanager --------------------------------------------------------------
check "promtool check config" promtool check config observability/prometheus/prometheus.yml
check "promtool check rules" promtool check rules observability/prometheus/rules/*.yml
check "promtool test rules (alert unit tests)" promtool test rules observability/prometheus/tests/*.yml

check_alertmanager() {
  if ! have amtool; then
    echo "amtool not installed; skipped (apt-get install prometheus-alertmanager)"
    return 0
  fi
  local config=observability/alertmanager/alertmanager.yml
  # amtool before 0.26 does not know url_file (read from a secret in the deployed v0.28):
  # validate the rest with a placeholder URL.
  if ! amtool --version 2>&1 | grep -qE 'version 0\.(2[6-9]|[3-9][0-9])|version [1-9]'; then
    sed 's#url_file: .*#url: http://127.0.0.1:9/placeholder#' "$config" >"$work/alertmanager.yml"
    config=$work/alertmanager.yml
  fi
  amtool check-config "$config"
}
check "amtool check-config" check_alertmanager

# ---- files, dashboards, metrics ---------------------------------------------------------------
check "every JSON and YAML file under swarm/ traefik/ observability/ parses" python3 swarm/checks.py parse
check "Grafana dashboards (datasource uids, panel ids, generator output)" python3 swarm/checks.py dashboards
metrics_label="dashboard and alert metrics are in observability/metrics.txt"
if [[ ${CHECK_METRICS_IN_CODE:-0} == 1 ]]; then
  metrics_label+=" and in the Rust code"
fi
check "$metrics_label" python3 swarm/checks.py metrics

# ---- summary ----------------------------------------------------------------------------------
echo
echo "swarm checks: $passed passed, $failed failed"
if ((failed > 0)); then
  printf 'failed: %s\n' "${failures[@]}" >&2
  exit 1
fi
