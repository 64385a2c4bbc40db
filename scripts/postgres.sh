#!/usr/bin/env bash
# A private PostgreSQL cluster for the tests (and for trying the projection on PostgreSQL).
#
#   scripts/postgres.sh start    install Debian's postgresql if missing, start the cluster,
#                                create the database; prints its SQLAlchemy URL (last line)
#   scripts/postgres.sh stop     stop the cluster
#   scripts/postgres.sh status   exit 0 when it runs (prints the URL), 3 when not
#
# Idempotent. The cluster listens on 127.0.0.1 only, trusts local connections (a throwaway
# test cluster: never expose it) and keeps its data under $TALKSTREAM_PG_DIR (default
# /tmp/talkstream-postgres). As root it runs as the `postgres` user (PostgreSQL refuses root).
set -euo pipefail

PORT=${TALKSTREAM_PG_PORT:-55432}
DIR=${TALKSTREAM_PG_DIR:-/tmp/talkstream-postgres}
DATA=$DIR/data
DB=${TALKSTREAM_PG_DATABASE:-talkstream}
URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"

say() { echo "postgres.sh: $*" >&2; }

bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

install() {
  if [ -n "$(bindir)" ] && [ -x "$(bindir)/initdb" ]; then
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    say "PostgreSQL is not installed and installing needs root: apt-get install -y postgresql"
    exit 1
  fi
  say "installing Debian's postgresql"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
}

running() {
  [ -f "$DATA/PG_VERSION" ] && as_owner "$(bindir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
  install
  local bin
  bin=$(bindir)
  mkdir -p "$DIR"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$DIR"
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    say "creating a cluster in $DATA"
    as_owner "$bin/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-sync >/dev/null
  fi
  if ! running; then
    say "starting on 127.0.0.1:$PORT"
    # durability off: a test cluster, rebuilt at will
    as_owner "$bin/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start -o \
      "-p $PORT -c listen_addresses=127.0.0.1 -k $DIR -c fsync=off \
       -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null \
      || { tail -n 20 "$DIR/server.log" >&2; exit 1; }
  fi
  if ! psql -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    psql -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qc "CREATE DATABASE \"$DB\"" >&2
  fi
  echo "$URL"
}

case "${1:-start}" in
  start) start ;;
  stop)
    if [ -n "$(bindir)" ] && running; then
      as_owner "$(bindir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
      say "stopped"
    else
      say "not running"
    fi
    ;;
  status)
    if [ -n "$(bindir)" ] && running; then echo "$URL"; else exit 3; fi
    ;;
  *) say "usage: $0 start|stop|status"; exit 2 ;;
esac
