#!/bin/sh
# KeyDB reads its password from the Docker secret at start. KeyDB has no requirepass-from-file
# option, so pass it as an argument; KeyDB rewrites its process title, so it does not show in
# the container's process list.
set -eu
secret=/run/secrets/keydb_password
if [ ! -r "$secret" ]; then
  echo "keydb entrypoint: $secret is missing" >&2
  exit 1
fi
password=$(cat "$secret")
# The image's entrypoint fixes /data ownership and drops to the keydb user.
if command -v docker-entrypoint.sh >/dev/null 2>&1; then
  exec docker-entrypoint.sh keydb-server /etc/keydb/keydb.conf --requirepass "$password"
fi
exec keydb-server /etc/keydb/keydb.conf --requirepass "$password"
