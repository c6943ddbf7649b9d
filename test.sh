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

run "cargo fmt --check" cargo fmt --all --check
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
