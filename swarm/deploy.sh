#!/usr/bin/env bash
# Deploys the booking platform on a Docker Swarm: from a fresh Ubuntu server to a healthy stack.
#
#   sudo swarm/deploy.sh --config swarm/deploy.conf        # headless
#   sudo swarm/deploy.sh --interactive                     # prompts for what is missing
#   sudo swarm/deploy.sh --config FILE --only observability
#   swarm/deploy.sh --config FILE --dry-run                # print every command, run none
#
# Steps: install Docker -> initialise the swarm and label this node -> create the Docker
# secrets (generated, or read from files named in the config) -> build (or pull) the images ->
# deploy the stack layers -> wait until every service has all replicas running and healthy.
# Every step is idempotent: re-running upgrades the stack to the current checkout.
# See swarm/README.md for the layout, secrets, partial deploys, upgrades and rollbacks.
set -euo pipefail

readonly ALL_LAYERS=(data observability identity app edge)

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
readonly script_dir repo_root

# ---- settings (defaults; the config file and prompts override) -------------------------------
STACK_NAME=booking
PUBLIC_HOST=
ACME_EMAIL=
ACME_RESOLVER=letsencrypt-tls
ACME_CA_SERVER=https://acme-v02.api.letsencrypt.org/directory
ADMIN_ALLOW_CIDRS=10.0.0.0/8,172.16.0.0/12,192.168.0.0/16
DOCKER_SOURCE=docker
ADVERTISE_ADDR=
NODE_LABELS=booking.data=true,booking.edge=true,booking.observability=true
IMAGE_PREFIX=booking
IMAGE_TAG=
PUSH_IMAGES=false
ALERT_WEBHOOK_URL=
SECRETS_DIR=/root/.booking-secrets
WAIT_TIMEOUT=900
RESGATE_REPLICAS=2
BOOKING_REPLICAS=2
IDENTITY_REPLICAS=2
WEB_REPLICAS=2
# SECRET_FILE_<name>=path: take that secret's value from a file instead of generating it.
declare -A SECRET_FILES=()

readonly CONFIG_KEYS=(STACK_NAME PUBLIC_HOST ACME_EMAIL ACME_RESOLVER ACME_CA_SERVER
  ADMIN_ALLOW_CIDRS DOCKER_SOURCE ADVERTISE_ADDR NODE_LABELS IMAGE_PREFIX IMAGE_TAG PUSH_IMAGES
  ALERT_WEBHOOK_URL SECRETS_DIR WAIT_TIMEOUT RESGATE_REPLICAS BOOKING_REPLICAS IDENTITY_REPLICAS
  WEB_REPLICAS)

# ---- options ----------------------------------------------------------------------------------
config_file=
interactive=false
dry_run=false
skip_install=false
skip_build=false
only=

usage() {
  cat <<'EOF'
Usage: swarm/deploy.sh [options]

  -c, --config FILE   read settings from FILE (KEY=VALUE lines; see swarm/deploy.conf.example)
  -i, --interactive   prompt for settings the config does not give
      --only LAYERS   deploy only these layers, comma-separated:
                      data, observability, identity, app, edge (default: all, in that order)
      --skip-install  do not install or configure Docker
      --skip-build    do not build images; the swarm pulls IMAGE_PREFIX/<name>:IMAGE_TAG
      --dry-run       print every command that would change the system, run none
  -h, --help          show this help

Run as root (or with sudo) on a swarm manager, from a checkout of the repository.
EOF
}

die() {
  printf 'deploy: error: %s\n' "$*" >&2
  exit 1
}

log() {
  printf '\n==> %s\n' "$*"
}

# Runs a command, or in dry-run mode prints it (shell-quoted) instead.
run() {
  if [[ $dry_run == true ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

is_config_key() {
  local key
  for key in "${CONFIG_KEYS[@]}"; do
    [[ $key == "$1" ]] && return 0
  done
  return 1
}

# Writes content to a file with the given mode (umask, so it is never readable by others even
# for an instant); in dry-run prints what it would write, without the content.
write_file() {
  local mode=$1 path=$2 content=$3 description=$4
  if [[ $dry_run == true ]]; then
    printf '+ write %q (mode %s): %s\n' "$path" "$mode" "$description"
    return 0
  fi
  (
    umask 077
    printf '%s' "$content" >"$path"
  )
  chmod "$mode" "$path"
}

# Like run, but feeds $1 to the command's stdin; in dry-run the value is not shown.
run_with_stdin() {
  local input=$1 description=$2
  shift 2
  if [[ $dry_run == true ]]; then
    printf '+'
    printf ' %q' "$@"
    printf ' <<< (%s)\n' "$description"
  else
    printf '%s' "$input" | "$@"
  fi
}

parse_args() {
  while (($# > 0)); do
    case $1 in
      -c | --config)
        [[ $# -ge 2 ]] || die "$1 needs a file"
        config_file=$2
        shift 2
        ;;
      -i | --interactive)
        interactive=true
        shift
        ;;
      --only)
        [[ $# -ge 2 ]] || die "--only needs a list of layers"
        only=$2
        shift 2
        ;;
      --skip-install)
        skip_install=true
        shift
        ;;
      --skip-build)
        skip_build=true
        shift
        ;;
      --dry-run)
        dry_run=true
        shift
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        usage >&2
        die "unknown option: $1"
        ;;
    esac
  done
  if [[ -z $config_file && $interactive == false ]]; then
    die "give --config FILE (headless) or --interactive"
  fi
}

# Reads KEY=VALUE lines. Only known keys are accepted and nothing is executed, so the file
# cannot run code as root.
load_config() {
  local file=$1 line key value line_no=0
  [[ -r $file ]] || die "cannot read config file $file"
  while IFS= read -r line || [[ -n $line ]]; do
    line_no=$((line_no + 1))
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    [[ $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] ||
      die "$file:$line_no: expected KEY=VALUE"
    key=${BASH_REMATCH[1]}
    value=${BASH_REMATCH[2]}
    value=${value%"${value##*[![:space:]]}"}
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
      value=${BASH_REMATCH[1]}
    fi
    if [[ $key == SECRET_FILE_* ]]; then
      SECRET_FILES[${key#SECRET_FILE_}]=$value
    elif is_config_key "$key"; then
      printf -v "$key" '%s' "$value"
    else
      die "$file:$line_no: unknown setting $key"
    fi
  done <"$file"
}

prompt() {
  local var=$1 question=$2 current=${!1} answer
  [[ -t 0 ]] || die "$var is not set and stdin is not a terminal (use --config)"
  read -r -p "$question [${current}]: " answer
  if [[ -n $answer ]]; then
    printf -v "$var" '%s' "$answer"
  fi
}

ask_missing_settings() {
  [[ $interactive == true ]] || return 0
  [[ -n $PUBLIC_HOST ]] || prompt PUBLIC_HOST "Public host name (DNS A/AAAA record pointing here)"
  [[ -n $ACME_EMAIL ]] || prompt ACME_EMAIL "E-mail for Let's Encrypt expiry notices"
  prompt ACME_RESOLVER "ACME challenge: letsencrypt-tls (port 443) or letsencrypt-http (port 80)"
  prompt DOCKER_SOURCE "Docker packages: docker (Docker's apt repository) or ubuntu (docker.io)"
  prompt ADMIN_ALLOW_CIDRS "Networks allowed to reach /grafana and the Keycloak admin console"
  if [[ -z $ALERT_WEBHOOK_URL ]]; then
    prompt ALERT_WEBHOOK_URL "Alert webhook URL (empty: alerts are only shown in Grafana)"
  fi
}

validate_settings() {
  [[ -n $PUBLIC_HOST ]] || die "PUBLIC_HOST is required"
  [[ $PUBLIC_HOST =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] ||
    die "PUBLIC_HOST must be a bare host name, got '$PUBLIC_HOST'"
  [[ -n $ACME_EMAIL && $ACME_EMAIL == *@* ]] || die "ACME_EMAIL must be an e-mail address"
  case $ACME_RESOLVER in
    letsencrypt-tls | letsencrypt-http) ;;
    *) die "ACME_RESOLVER must be letsencrypt-tls or letsencrypt-http" ;;
  esac
  case $DOCKER_SOURCE in
    docker | ubuntu) ;;
    *) die "DOCKER_SOURCE must be docker or ubuntu" ;;
  esac
  [[ $STACK_NAME =~ ^[a-z][a-z0-9-]*$ ]] || die "STACK_NAME must be lower-case letters, digits, dashes"
  [[ $WAIT_TIMEOUT =~ ^[0-9]+$ ]] || die "WAIT_TIMEOUT must be a number of seconds"
  local n
  for n in RESGATE_REPLICAS BOOKING_REPLICAS IDENTITY_REPLICAS WEB_REPLICAS; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive number"
  done
}

selected_layers=()
select_layers() {
  local wanted layer known known_layer
  if [[ -z $only ]]; then
    selected_layers=("${ALL_LAYERS[@]}")
    return
  fi
  IFS=',' read -r -a wanted <<<"$only"
  for layer in "${wanted[@]}"; do
    known=false
    for known_layer in "${ALL_LAYERS[@]}"; do
      [[ $layer == "$known_layer" ]] && known=true
    done
    [[ $known == true ]] || die "unknown layer '$layer' (known: ${ALL_LAYERS[*]})"
  done
  # Keep the dependency order whatever order --only gave.
  for layer in "${ALL_LAYERS[@]}"; do
    for known in "${wanted[@]}"; do
      if [[ $layer == "$known" ]]; then
        selected_layers+=("$layer")
      fi
    done
  done
}

layer_selected() {
  local layer
  for layer in "${selected_layers[@]}"; do
    [[ $layer == "$1" ]] && return 0
  done
  return 1
}

# ---- Docker -----------------------------------------------------------------------------------
install_docker() {
  [[ $skip_install == true ]] && return 0
  log "Installing Docker (source: $DOCKER_SOURCE)"
  if [[ $dry_run == false ]] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "Docker is already installed and running; skipping installation."
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [[ $DOCKER_SOURCE == docker ]]; then
    # Docker's own apt repository: current Engine, Buildx and Compose plugins, and security
    # fixes as Docker releases them.
    run apt-get update
    run apt-get install -y ca-certificates curl
    run install -m 0755 -d /etc/apt/keyrings
    run curl -fsSL https://download.docker.com/linux/ubuntu/gpg -o /etc/apt/keyrings/docker.asc
    run chmod a+r /etc/apt/keyrings/docker.asc
    local codename=noble
    if [[ -r /etc/os-release ]]; then
      # shellcheck source=/dev/null
      codename=$(. /etc/os-release && printf '%s' "${UBUNTU_CODENAME:-${VERSION_CODENAME:-noble}}")
    fi
    local arch=amd64
    if [[ $dry_run == false ]]; then
      arch=$(dpkg --print-architecture)
    fi
    write_file 0644 /etc/apt/sources.list.d/docker.sources "Types: deb
URIs: https://download.docker.com/linux/ubuntu
Suites: $codename
Components: stable
Architectures: $arch
Signed-By: /etc/apt/keyrings/docker.asc
" "apt source for download.docker.com, suite $codename"
    run apt-get update
    run apt-get install -y docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin
  else
    # Ubuntu's own packages: maintained by Ubuntu's security team within the release, but
    # often a major version behind. docker-buildx provides BuildKit for `docker build`.
    run apt-get update
    run apt-get install -y docker.io docker-buildx
  fi
  run systemctl enable --now docker
  configure_docker_daemon
}

configure_docker_daemon() {
  # Rotate container logs (Alloy ships them to Loki; the local copy is a short buffer).
  # live-restore stays off: Swarm mode does not support it.
  local daemon_json='{
  "log-driver": "json-file",
  "log-opts": { "max-size": "10m", "max-file": "3" }'
  # Docker Engine 29 refuses API clients older than 1.44 by default; Alloy's Docker discovery
  # still speaks 1.43. Lower the floor where the engine supports the setting.
  if [[ $dry_run == true ]] || dockerd --help 2>&1 | grep -q -- '--min-api-version'; then
    daemon_json+=',
  "min-api-version": "1.40"'
  fi
  daemon_json+='
}
'
  if [[ $dry_run == false && -s /etc/docker/daemon.json ]]; then
    echo "/etc/docker/daemon.json exists; leaving it unchanged."
    return 0
  fi
  run install -m 0755 -d /etc/docker
  write_file 0644 /etc/docker/daemon.json "$daemon_json" "log rotation, min-api-version"
  run systemctl restart docker
}

init_swarm() {
  log "Initialising the swarm"
  local state=inactive
  if [[ $dry_run == false ]]; then
    state=$(docker info --format '{{.Swarm.LocalNodeState}}')
  fi
  if [[ $state == active ]]; then
    if [[ $dry_run == false && $(docker info --format '{{.Swarm.ControlAvailable}}') != true ]]; then
      die "this node is a swarm worker; run deploy.sh on a manager"
    fi
    echo "Swarm already active."
  else
    local args=(docker swarm init)
    [[ -n $ADVERTISE_ADDR ]] && args+=(--advertise-addr "$ADVERTISE_ADDR")
    run "${args[@]}"
  fi

  # Placement: stateful services follow these labels (README, "Placement").
  local node_id='<this-node-id>' label label_args=() labels
  if [[ $dry_run == false ]]; then
    node_id=$(docker info --format '{{.Swarm.NodeID}}')
  fi
  IFS=',' read -r -a labels <<<"$NODE_LABELS"
  for label in "${labels[@]}"; do
    [[ -n $label ]] && label_args+=(--label-add "$label")
  done
  if ((${#label_args[@]} > 0)); then
    run docker node update "${label_args[@]}" "$node_id"
  fi
}

# ---- secrets ----------------------------------------------------------------------------------
random_secret() {
  # 40 alphanumeric characters (~238 bits); URL-safe, so it can go into connection URLs as is.
  local value=''
  while ((${#value} < 40)); do
    value+=$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  done
  printf '%s' "${value:0:40}"
}

# Percent-encodes a value for use in the user-info part of a URL.
url_encode() {
  local LC_ALL=C input=$1 output='' char i
  for ((i = 0; i < ${#input}; i++)); do
    char=${input:i:1}
    case $char in
      [A-Za-z0-9._~-]) output+=$char ;;
      *) output+=$(printf '%%%02X' "'$char") ;;
    esac
  done
  printf '%s' "$output"
}

secret_exists() {
  [[ $dry_run == true ]] && return 1
  docker secret inspect "$1" >/dev/null 2>&1
}

# Value of a secret: from SECRET_FILE_<short name> when configured, else generated.
secret_value() {
  local short=$1 file=${SECRET_FILES[$1]:-}
  if [[ -n $file ]]; then
    [[ -r $file ]] || die "SECRET_FILE_$short: cannot read $file"
    local value
    value=$(<"$file")
    [[ -n $value ]] || die "SECRET_FILE_$short: $file is empty"
    printf '%s' "$value"
  else
    random_secret
  fi
}

create_secret() {
  local name=$1 value=$2 description=$3
  run_with_stdin "$value" "$description" \
    docker secret create --label "com.booking.managed=true" "$name" -
}

# Operators sign in with these two; keep a root-only copy of generated values.
remember_secret() {
  local short=$1 value=$2
  [[ -n ${SECRET_FILES[$short]:-} ]] && return 0
  run install -m 0700 -d "$SECRETS_DIR"
  write_file 0600 "$SECRETS_DIR/$short" "$value" "generated $short"
}

ensure_secrets() {
  log "Creating Docker secrets (existing ones are kept)"
  local value

  if ! secret_exists booking_postgres_password; then
    create_secret booking_postgres_password "$(secret_value postgres_password)" "postgres_password"
  fi

  # Each password and the URL built from it are created together: a secret cannot be read
  # back from the swarm, so the URL can only be derived while the password is at hand.
  if ! secret_exists booking_db_password; then
    secret_exists booking_database_url &&
      die "booking_database_url exists without booking_db_password; remove it (README, Secrets)"
    value=$(secret_value db_password)
    create_secret booking_db_password "$value" "db_password"
    create_secret booking_database_url \
      "postgres://booking:$(url_encode "$value")@postgres:5432/booking" "database URL with db_password"
  elif ! secret_exists booking_database_url; then
    die "booking_db_password exists but booking_database_url does not; create it by hand (README, Secrets)"
  fi

  if ! secret_exists booking_keydb_password; then
    secret_exists booking_redis_url &&
      die "booking_redis_url exists without booking_keydb_password; remove it (README, Secrets)"
    value=$(secret_value keydb_password)
    create_secret booking_keydb_password "$value" "keydb_password"
    create_secret booking_redis_url "redis://:$(url_encode "$value")@keydb:6379/0" "redis URL with keydb_password"
  elif ! secret_exists booking_redis_url; then
    die "booking_keydb_password exists but booking_redis_url does not; create it by hand (README, Secrets)"
  fi

  if ! secret_exists booking_keycloak_db_password; then
    create_secret booking_keycloak_db_password "$(secret_value keycloak_db_password)" "keycloak_db_password"
  fi

  if ! secret_exists booking_keycloak_admin_password; then
    value=$(secret_value keycloak_admin_password)
    create_secret booking_keycloak_admin_password "$value" "keycloak_admin_password"
    remember_secret keycloak_admin_password "$value"
  fi

  if ! secret_exists booking_grafana_admin_password; then
    value=$(secret_value grafana_admin_password)
    create_secret booking_grafana_admin_password "$value" "grafana_admin_password"
    remember_secret grafana_admin_password "$value"
  fi

  if ! secret_exists booking_alertmanager_webhook_url; then
    # Without a receiver the webhook points at the discard port: alerts still show in Grafana.
    value=${ALERT_WEBHOOK_URL:-http://127.0.0.1:9/alerts-disabled}
    create_secret booking_alertmanager_webhook_url "$value" "alertmanager webhook URL"
  fi
}

# ---- images -----------------------------------------------------------------------------------
resolve_image_tag() {
  [[ -n $IMAGE_TAG ]] && return 0
  if [[ $skip_build == true ]]; then
    die "IMAGE_TAG is required with --skip-build (the tag to pull)"
  fi
  if [[ $dry_run == true ]]; then
    IMAGE_TAG='<git-short-sha>'
  elif IMAGE_TAG=$(git -C "$repo_root" rev-parse --short=12 HEAD 2>/dev/null); then
    if [[ -n $(git -C "$repo_root" status --porcelain 2>/dev/null) ]]; then
      IMAGE_TAG+="-dirty-$(date +%Y%m%d%H%M%S)"
    fi
  else
    IMAGE_TAG=$(date +%Y%m%d%H%M%S)
  fi
}

build_images() {
  [[ $skip_build == true ]] && return 0
  local targets=() target
  if layer_selected app; then
    targets+=(resgate-rs catalog seats pricing tickets reports web)
  fi
  if layer_selected identity; then
    targets+=(identity-auth)
  fi
  if ((${#targets[@]} > 0)); then
    log "Building ${targets[*]} (one workspace compile, shared by all targets)"
    for target in "${targets[@]}"; do
      run env DOCKER_BUILDKIT=1 docker build \
        --file "$repo_root/swarm/docker/rust.Dockerfile" \
        --target "$target" \
        --build-arg "REVISION=$IMAGE_TAG" \
        --tag "$IMAGE_PREFIX/$target:$IMAGE_TAG" \
        "$repo_root"
    done
  fi
  if layer_selected identity; then
    log "Building the Keycloak image"
    run env DOCKER_BUILDKIT=1 docker build --tag "$IMAGE_PREFIX/keycloak:$IMAGE_TAG" \
      "$repo_root/swarm/docker/keycloak"
    targets+=(keycloak)
  fi
  if [[ $PUSH_IMAGES == true ]]; then
    log "Pushing images to $IMAGE_PREFIX"
    for target in "${targets[@]}"; do
      run docker push "$IMAGE_PREFIX/$target:$IMAGE_TAG"
    done
  fi
}

# ---- deploy -----------------------------------------------------------------------------------
stack_file() {
  printf '%s/swarm/stack/%s.yml' "$repo_root" "$1"
}

# Digest of every config file a layer mounts. It becomes part of the config object names, so a
# changed file creates a new Docker config and the services using it roll (configs are
# immutable in Swarm).
config_version() {
  local file dir path
  file=$(stack_file "$1")
  dir=$(dirname "$file")
  local paths=()
  mapfile -t paths < <(sed -n 's/^[[:space:]]*file:[[:space:]]*//p' "$file")
  for path in "${paths[@]}"; do
    [[ -r $dir/$path ]] || die "layer $1 mounts $dir/$path, which does not exist"
  done
  for path in "${paths[@]}"; do
    cat "$dir/$path"
  done | sha256sum | cut -c1-12
}

export_stack_environment() {
  export STACK_NAME PUBLIC_HOST ACME_EMAIL ACME_RESOLVER ACME_CA_SERVER ADMIN_ALLOW_CIDRS \
    IMAGE_PREFIX IMAGE_TAG RESGATE_REPLICAS BOOKING_REPLICAS IDENTITY_REPLICAS WEB_REPLICAS
  local layer var version
  for layer in "${selected_layers[@]}"; do
    var="${layer^^}_CONFIG_VERSION"
    version=$(config_version "$layer") || exit 1
    printf -v "$var" '%s' "$version"
    export "${var?}"
  done
}

deploy_layers() {
  local layer args
  for layer in "${selected_layers[@]}"; do
    log "Deploying layer '$layer'"
    # No --prune: services of the layers not deployed now must stay.
    args=(docker stack deploy --with-registry-auth --compose-file "$(stack_file "$layer")")
    # Locally built images (app, identity) exist on this node only: do not ask a registry for
    # their digest. Public images keep the default, which pins the digest at deploy time.
    if [[ ($layer == app || $layer == identity) && $skip_build == false && $PUSH_IMAGES == false ]]; then
      args+=(--resolve-image never)
    fi
    if [[ $dry_run == true ]]; then
      local var="${layer^^}_CONFIG_VERSION"
      printf '+ export STACK_NAME=%q PUBLIC_HOST=%q IMAGE_TAG=%q %s=%q  # and the other settings\n' \
        "$STACK_NAME" "$PUBLIC_HOST" "$IMAGE_TAG" "$var" "${!var}"
    fi
    run "${args[@]}" "$STACK_NAME"
  done
}

# Service names (without the stack prefix) declared by a layer file.
layer_services() {
  awk '/^services:/ { in_services = 1; next }
       /^[^[:space:]#]/ { in_services = 0 }
       in_services && /^  [A-Za-z0-9_-]+:[[:space:]]*$/ { sub(/^  /, ""); sub(/:.*/, ""); print }' \
    "$(stack_file "$1")"
}

wait_until_healthy() {
  log "Waiting up to ${WAIT_TIMEOUT}s for every service to be running and healthy"
  local services=() layer service
  for layer in "${selected_layers[@]}"; do
    while read -r service; do
      services+=("${STACK_NAME}_$service")
    done < <(layer_services "$layer")
  done
  if [[ $dry_run == true ]]; then
    printf '+ (poll) docker service ls --format {{.Name}} {{.Replicas}}  # until each of %s is n/n\n' \
      "${services[*]}"
    return 0
  fi

  local deadline=$((SECONDS + WAIT_TIMEOUT)) pending replicas
  while :; do
    pending=()
    for service in "${services[@]}"; do
      # "2/2", or "1/1 (max 1 per node)"; Swarm counts a task as running only once its
      # healthcheck passes.
      replicas=$(docker service ls --filter "name=$service" --format '{{.Name}} {{.Replicas}}' |
        awk -v name="$service" '$1 == name { print $2 }')
      if [[ ! $replicas =~ ^([0-9]+)/([0-9]+)$ ]] || ((BASH_REMATCH[1] != BASH_REMATCH[2])) ||
        ((BASH_REMATCH[2] == 0)); then
        pending+=("$service ${replicas:-missing}")
      fi
    done
    if ((${#pending[@]} == 0)); then
      echo "All ${#services[@]} services are running."
      return 0
    fi
    if ((SECONDS >= deadline)); then
      printf 'Not ready after %ss:\n' "$WAIT_TIMEOUT" >&2
      printf '  %s\n' "${pending[@]}" >&2
      for service in "${pending[@]}"; do
        docker service ps --no-trunc --format '  {{.Name}} {{.CurrentState}} {{.Error}}' \
          "${service%% *}" 2>/dev/null | head -n 5 >&2 || true
      done
      die "deployment did not become healthy; see 'docker service ps' and the README's troubleshooting notes"
    fi
    printf '  waiting for %d service(s): %s\n' "${#pending[@]}" "${pending[0]}"
    sleep 10
  done
}

summary() {
  log "Done"
  cat <<EOF
Site:            https://$PUBLIC_HOST/
Gateway:         wss://$PUBLIC_HOST/ws  and  https://$PUBLIC_HOST/api
Keycloak:        https://$PUBLIC_HOST/auth/  (admin console from $ADMIN_ALLOW_CIDRS)
Grafana:         https://$PUBLIC_HOST/grafana/  (from $ADMIN_ALLOW_CIDRS)
Images:          $IMAGE_PREFIX/*:$IMAGE_TAG
Admin passwords: generated ones are in $SECRETS_DIR (root only)
EOF
}

main() {
  parse_args "$@"
  [[ -n $config_file ]] && load_config "$config_file"
  ask_missing_settings
  validate_settings
  select_layers
  if [[ $dry_run == false && $EUID -ne 0 ]]; then
    die "run as root (sudo), or use --dry-run"
  fi
  [[ $dry_run == true ]] && echo "# dry run: commands are printed, none is executed"
  cd "$repo_root"
  install_docker
  init_swarm
  ensure_secrets
  resolve_image_tag
  build_images
  export_stack_environment
  deploy_layers
  wait_until_healthy
  summary
}

main "$@"
