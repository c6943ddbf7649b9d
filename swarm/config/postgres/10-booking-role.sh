#!/usr/bin/env bash
# Runs once, on the first start of an empty data volume (docker-entrypoint-initdb.d).
# Creates the application role and database for the booking services; the password comes
# from the Docker secret, never from the environment. The services own their schema and
# run their own migrations.
set -euo pipefail

password_file=/run/secrets/booking_db_password
app_user=${BOOKING_DB_USER:-booking}
app_db=${BOOKING_DB_NAME:-booking}

if [[ ! -r $password_file ]]; then
  echo "10-booking-role.sh: $password_file is missing" >&2
  exit 1
fi
password=$(<"$password_file")

# psql variables (:'name') quote the values, so the password needs no escaping here.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v app_user="$app_user" -v app_db="$app_db" -v app_password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'app_db', :'app_user') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'app_db') \gexec
SQL
