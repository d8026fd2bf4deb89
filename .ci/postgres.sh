#!/usr/bin/env bash
# A PostgreSQL server on localhost for the shared-study tests of `condense search` (several workers on one
# Optuna study). Installs Debian's postgresql if needed (apt-get, non-interactive; needs root), starts a
# cluster listening on 127.0.0.1 only, creates the role and database `condense` (password `condense`),
# installs the psycopg2-binary driver into the current `python` if it is missing, and prints the URL
# (the only line on stdout; everything else goes to stderr):
#
#     export CONDENSE_TEST_PG_URL=$(bash .ci/postgres.sh)   # postgresql://condense:condense@127.0.0.1:5432/condense
#
# Idempotent: a second call finds the server running and prints the same URL. Port: $CONDENSE_PG_PORT
# (default 5432). Stop the server with: pg_ctlcluster <version> main stop
set -euo pipefail

PORT="${CONDENSE_PG_PORT:-5432}"
NAME=condense
PY="${PYTHON:-python}"
log() { echo "postgres.sh: $*" >&2; }

if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        log "postgresql is not installed and this is not root: cannot apt-get install it"; exit 1
    fi
    log "installing postgresql (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
fi
VERSION=$(basename "$(ls -d /usr/lib/postgresql/*/ | sort -V | tail -n 1)")
BIN="/usr/lib/postgresql/$VERSION/bin"

# One cluster ("main", as Debian creates it), on our port and on localhost only.
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$VERSION main"; then
    log "creating cluster $VERSION/main"
    pg_createcluster "$VERSION" main -p "$PORT" >&2
fi
STATUS=$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $4}')
ONPORT=$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $3}')
CONF="/etc/postgresql/$VERSION/main/postgresql.conf"
if [ -f "$CONF" ]; then
    sed -i -E "s/^#?port = [0-9]+/port = $PORT/; s/^#?listen_addresses = .*/listen_addresses = 'localhost'/" "$CONF"
fi
if [ "$STATUS" = "online" ] && [ "$ONPORT" != "$PORT" ]; then
    log "restarting cluster $VERSION/main on port $PORT (it runs on $ONPORT)"
    pg_ctlcluster "$VERSION" main restart >&2
elif [ "$STATUS" != "online" ]; then
    log "starting cluster $VERSION/main on port $PORT"
    pg_ctlcluster "$VERSION" main start >&2
fi
for _ in $(seq 1 60); do
    if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then break; fi
    sleep 0.5
done
"$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" >&2 || { log "the server does not answer on port $PORT"; exit 1; }

psql_su() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" "$@"; }
if [ "$(psql_su -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$NAME'")" != 1 ]; then
    log "creating role $NAME"
    psql_su -c "CREATE ROLE $NAME LOGIN PASSWORD '$NAME'" >&2
fi
if [ "$(psql_su -tAc "SELECT 1 FROM pg_database WHERE datname = '$NAME'")" != 1 ]; then
    log "creating database $NAME"
    psql_su -c "CREATE DATABASE $NAME OWNER $NAME" >&2
fi

if command -v "$PY" >/dev/null && ! "$PY" -c "import psycopg2" 2>/dev/null; then
    log "installing psycopg2-binary into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install --quiet psycopg2-binary >&2
fi

URL="postgresql://$NAME:$NAME@127.0.0.1:$PORT/$NAME"
# Check the URL really works (password authentication over TCP), not just the socket.
PGPASSWORD="$NAME" "$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U "$NAME" -d "$NAME" -tAc "SELECT 1" >/dev/null
echo "$URL"
