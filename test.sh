#!/usr/bin/env bash
# Runs every check and test of the project: formatting, lints, the Rust test suites (against real
# nats-server, PostgreSQL and Redis started by the tests themselves), the Node tests, and the
# production-stack checks. Run ./setup.sh first.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }
failed=0
passed=0
run() {
  local name=$1; shift
  step "$name"
  if "$@"; then passed=$((passed + 1)); else echo "FAILED: $name"; failed=$((failed + 1)); fi
}

# Every lock file installs as committed (`npm ci` refuses one that is out of sync, e.g. without
# other platforms' optional packages), checked on a copy so node_modules stays untouched.
lockfiles_install() {
  local dir tmp ok=0
  for dir in $(git ls-files '*package-lock.json' | xargs -rn1 dirname); do
    tmp=$(mktemp -d)
    cp "$dir/package.json" "$dir/package-lock.json" "$tmp/"
    if ! (cd "$tmp" && npm ci --dry-run --no-audit --no-fund --loglevel=error >/dev/null); then
      echo "npm ci refuses $dir/package-lock.json (regenerate it: npm install --package-lock-only)"
      ok=1
    fi
    rm -rf "$tmp"
  done
  return $ok
}

run "cargo fmt --check" cargo fmt --all --check
run "npm lock files" lockfiles_install
run "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
run "cargo test" cargo test --workspace --no-fail-fast
for dir in $(git ls-files '*package.json' | xargs -rn1 dirname | sort -u); do
  if [[ -d "$dir/test" || -d "$dir/tests" ]] && grep -q '"test"' "$dir/package.json"; then
    run "npm test ($dir)" npm --prefix "$dir" test --silent
  fi
done
if [[ -f swarm/check.sh ]]; then
  run "swarm checks" env CHECK_METRICS_IN_CODE=1 bash swarm/check.sh
fi

printf '\ntest suites: %d passed, %d failed\n' "$passed" "$failed"
[[ $failed -eq 0 ]]
