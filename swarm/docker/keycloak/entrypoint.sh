#!/bin/bash
# Entrypoint for the booking Keycloak image.
#
# 1. Keycloak reads its settings from KC_* variables but has no *_FILE convention, while
#    Docker secrets arrive as files. For every VAR_FILE in the environment, export VAR with the
#    file's content (e.g. KC_DB_PASSWORD_FILE -> KC_DB_PASSWORD), then exec kc.sh. The values
#    never appear in the service definition or in `docker inspect`.
# 2. `booking-entrypoint.sh --healthcheck` is the Docker HEALTHCHECK: a GET of the readiness
#    endpoint on the management port through bash's /dev/tcp (the image has no curl).
set -euo pipefail

healthcheck() {
  local path="${KC_HTTP_RELATIVE_PATH:-/auth}/health/ready"
  local status_line
  exec 3<>/dev/tcp/127.0.0.1/9000
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
  IFS= read -r -t 4 status_line <&3
  exec 3<&-
  [[ $status_line == "HTTP/1."[01]" 200"* ]]
}

if [[ ${1:-} == "--healthcheck" ]]; then
  healthcheck
  exit $?
fi

while IFS='=' read -r name _; do
  case "$name" in
    KC_*_FILE | KEYCLOAK_*_FILE)
      target=${name%_FILE}
      file=${!name}
      if [[ ! -r $file ]]; then
        echo "booking-entrypoint: $name points to unreadable file $file" >&2
        exit 1
      fi
      export "$target=$(<"$file")"
      unset "$name"
      ;;
  esac
done < <(env)

exec /opt/keycloak/bin/kc.sh "$@"
