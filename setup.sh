#!/usr/bin/env bash
# Sets up this machine for the platform.
#
#   ./setup.sh            laptop/dev/CI mode: installs the system packages the platform and its
#                         tests need (Debian/Ubuntu packages only), the npm dependencies, and builds.
#   ./setup.sh --host ... production host mode: hands over to swarm/deploy.sh (Docker Swarm).
#
# Idempotent: packages already present are not reinstalled, builds are incremental.
set -euo pipefail
cd "$(dirname "$0")"

if [[ "${1:-}" == "--host" ]]; then
  shift
  exec bash swarm/deploy.sh "$@"
fi

step() { printf '\n==> %s\n' "$*"; }
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# Debian package -> a file it installs (to tell whether it is there).
declare -A PACKAGES=(
  [nats-server]=/usr/sbin/nats-server
  [redis-server]=/usr/bin/redis-server
  [postgresql]=/usr/lib/postgresql
  [postgresql-client]=/usr/bin/psql
  [nodejs]=/usr/bin/node
  [npm]=/usr/bin/npm
  [build-essential]=/usr/bin/make
  [pkg-config]=/usr/bin/pkg-config
  [chromium]=/usr/bin/chromium
  [chromium-driver]=/usr/bin/chromedriver
  [shellcheck]=/usr/bin/shellcheck
  [prometheus]=/usr/bin/promtool
  [jq]=/usr/bin/jq
  [curl]=/usr/bin/curl
  [ca-certificates]=/etc/ssl/certs
  [openssl]=/usr/bin/openssl
  [python3-yaml]=/usr/lib/python3/dist-packages/yaml
)

step "System packages"
if ! command -v apt-get >/dev/null; then
  echo "setup.sh supports Debian/Ubuntu (apt-get). Install the equivalent of: ${!PACKAGES[*]}" >&2
  exit 1
fi
missing=()
for pkg in "${!PACKAGES[@]}"; do
  [[ -e "${PACKAGES[$pkg]}" ]] || missing+=("$pkg")
done
# The swarm checks need only the docker client (no engine); docker.io provides it on Debian.
command -v docker >/dev/null || missing+=(docker.io)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "all present"
fi

step "Rust toolchain"
if ! command -v cargo >/dev/null; then
  echo "cargo not found. Install Rust >= 1.90 (https://rustup.rs) and run ./setup.sh again." >&2
  exit 1
fi
cargo --version

step "npm dependencies"
for dir in $(git ls-files '*package-lock.json' | xargs -rn1 dirname); do
  if [[ ! -d "$dir/node_modules" || "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]]; then
    echo "npm ci in $dir"
    # Exactly the committed lock file, never rewritten: it lists every platform's optional
    # packages (regenerate with `npm install --package-lock-only`), so `npm ci` takes it anywhere.
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  else
    echo "$dir up to date"
  fi
done
for dir in $(git ls-files '*package.json' | xargs -rn1 dirname); do
  if [[ -x "$dir/node_modules/.bin/vite" && -f "$dir/vite.config.js" ]]; then
    echo "building front end in $dir"
    (cd "$dir" && npm run --silent build)
  fi
done

step "Build (cargo build --workspace --all-targets)"
cargo build --workspace --all-targets

step "Done"
echo "Run the platform:  ./run.sh"
echo "Run all tests:     ./test.sh"
