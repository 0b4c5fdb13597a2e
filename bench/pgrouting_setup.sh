#!/usr/bin/env bash
# A private PostgreSQL 15 with PostGIS and pgRouting for bench/geo.py (Debian packages; run as root).
#
#   bash bench/pgrouting_setup.sh          # install if needed, init and start; prints the DSN
#   bash bench/pgrouting_setup.sh stop     # stop it
#
# It listens on loopback only (127.0.0.1:$PORT) and a private unix socket directory, trusts local
# connections (a throw-away benchmark cluster, no data worth protecting), and lives in $PGDATA.
set -euo pipefail

PORT="${ICP_BENCH_PG_PORT:-55432}"
PGDATA="${ICP_BENCH_PGDATA:-/tmp/icp-bench-pg/data}"
SOCKDIR="${ICP_BENCH_PG_SOCKDIR:-/tmp/icp-bench-pg/sock}"
BIN=/usr/lib/postgresql/15/bin
DB=icpbench

as_postgres() { runuser -u postgres -- "$@"; }

if [[ "${1:-}" == "stop" ]]; then
    as_postgres "$BIN/pg_ctl" -D "$PGDATA" -m fast stop || true
    exit 0
fi

need=()
for pkg in postgresql-15 postgresql-15-postgis-3 postgresql-15-pgrouting; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

mkdir -p "$(dirname "$PGDATA")" "$SOCKDIR"
chown postgres:postgres "$(dirname "$PGDATA")" "$SOCKDIR"
if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    as_postgres "$BIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 >/dev/null
fi
if ! as_postgres "$BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_postgres "$BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/../server.log" -w start \
        -o "-p $PORT -k $SOCKDIR -c listen_addresses=127.0.0.1 -c shared_buffers=256MB \
            -c work_mem=64MB -c fsync=off -c synchronous_commit=off" >/dev/null
fi
psql() { as_postgres "$BIN/psql" -h "$SOCKDIR" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
if [[ "$(psql -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]]; then
    psql -d postgres -c "CREATE DATABASE $DB"
fi
psql -d "$DB" -c "CREATE EXTENSION IF NOT EXISTS postgis; CREATE EXTENSION IF NOT EXISTS pgrouting;"
echo "postgresql://postgres@127.0.0.1:$PORT/$DB"
