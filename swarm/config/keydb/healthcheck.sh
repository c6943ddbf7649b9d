#!/bin/sh
# Healthcheck for KeyDB: authenticate through REDISCLI_AUTH (not on the command line) and
# expect PONG.
set -eu
REDISCLI_AUTH=$(cat /run/secrets/keydb_password)
export REDISCLI_AUTH
[ "$(keydb-cli -h 127.0.0.1 -p 6379 ping)" = "PONG" ]
