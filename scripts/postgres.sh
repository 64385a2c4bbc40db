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
#
# It listens on $TALKSTREAM_PG_PORT (default 15432: below the kernel's ephemeral range, where
# any outgoing connection's local port could hold the address). When that port is taken, it
# starts on the next free one, says so, and the URL it prints (and `status` prints) is the
# port the cluster listens on, read from its postmaster.pid.
#
# The test sessions (tests/postgres.py) share it through leases, so that one session ending
# never stops it under another's feet (two pytest runs on one machine, or pytest-xdist's
# workers):
#
#   scripts/postgres.sh lease PID     as start, and the process PID uses the cluster
#   scripts/postgres.sh release PID   PID is done with it: the last session to leave stops
#                                     the cluster, when a session (not `start`) started it
#
# A lease is a file $DIR/leases/PID holding that process's start time: a lease whose process
# is gone (or whose pid another process has now) counts for nothing. A cluster started with
# `start` is never stopped by a session, nor one that `start` was run on while sessions had it.
# Every command but status holds the lock $DIR.lock: a session's look at the leases and the
# start or stop it decides on happen as one, with no other command in between.
set -euo pipefail

PORT=${TALKSTREAM_PG_PORT:-15432}
PORTS_TRIED=20 # the asked port and the next ones, when taken
DIR=${TALKSTREAM_PG_DIR:-/tmp/talkstream-postgres}
DATA=$DIR/data
DB=${TALKSTREAM_PG_DATABASE:-talkstream}
LOCK=$DIR.lock
LEASES=$DIR/leases
BY_SESSION=$DIR/started-by-a-test-session # while the cluster running is one a session started

say() { echo "postgres.sh: $*" >&2; }

command=${1:-start}
if [ "$command" != status ] && [ "${TALKSTREAM_PG_LOCKED:-}" != "$LOCK" ]; then
  # the whole command again under the lock; -o: the lock's descriptor is not handed down to
  # what the command starts (a postmaster holding it would hold every later command off)
  mkdir -p "$(dirname "$LOCK")"
  if ! flock -n -o "$LOCK" true; then
    say "waiting for another postgres.sh on $DIR (the lock $LOCK)"
  fi
  TALKSTREAM_PG_LOCKED=$LOCK exec flock -o "$LOCK" "$BASH" "$0" "$@"
fi

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
  [ -n "$(bindir)" ] && [ -f "$DATA/PG_VERSION" ] \
    && as_owner "$(bindir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

listening_port() { # the running cluster's: line 4 of its postmaster.pid
  sed -n 4p "$DATA/postmaster.pid"
}

url() {
  echo "postgresql+psycopg://postgres@127.0.0.1:$(listening_port)/$DB"
}

listen() { # start the postmaster on 127.0.0.1:$1; fails with 2 when the address is taken
  local bin=$1 port=$2 logged
  logged=$(stat -c %s "$DIR/server.log" 2>/dev/null || echo 0)
  say "starting on 127.0.0.1:$port"
  # durability off: a test cluster, rebuilt at will
  as_owner "$bin/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start -o \
    "-p $port -c listen_addresses=127.0.0.1 -k $DIR -c fsync=off \
     -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null \
    && return 0
  if tail -c +$((logged + 1)) "$DIR/server.log" | grep -q "could not create any TCP/IP sockets"; then
    return 2
  fi
  tail -n 20 "$DIR/server.log" >&2
  return 1
}

start_cluster() {
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
  local port=$PORT
  if ! running; then
    until listen "$bin" "$port"; do
      [ $? = 2 ] || exit 1
      say "127.0.0.1:$port is taken (a server, or an outgoing connection's local port)"
      port=$((port + 1))
      if [ "$port" -ge $((PORT + PORTS_TRIED)) ]; then
        say "no free port in 127.0.0.1:$PORT..$((port - 1)): set TALKSTREAM_PG_PORT to another"
        exit 1
      fi
    done
  fi
  port=$(listening_port)
  if ! psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE \"$DB\"" >&2
  fi
}

stop_cluster() {
  if running; then
    as_owner "$(bindir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    say "stopped"
  else
    say "not running"
  fi
  rm -f "$BY_SESSION"
}

started_at() { # a process's start, in clock ticks after boot (field 22 of /proc/PID/stat)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # past the command's name, which may hold spaces and parentheses
  # shellcheck disable=SC2086  # split on purpose: the fields from the third on
  set -- $stat
  echo "${20}"
}

live_leases() { # the pids of the sessions using the cluster; the leases of the gone are dropped
  local lease pid
  for lease in "$LEASES"/*; do
    [ -f "$lease" ] || continue
    pid=${lease##*/}
    if [ "$(started_at "$pid" || true)" = "$(cat "$lease")" ]; then
      echo "$pid"
    else
      rm -f "$lease"
    fi
  done
}

pid_argument() {
  if [[ ! "${1:-}" =~ ^[0-9]+$ ]]; then
    say "usage: $0 $command PID"
    exit 2
  fi
}

case "$command" in
  start)
    start_cluster
    rm -f "$BY_SESSION" # started by hand now: no session stops it
    url
    ;;
  stop)
    others=$(live_leases)
    if [ -n "$others" ] && running; then
      say "stopping it under the test sessions using it (pids $(echo $others))"
    fi
    stop_cluster
    ;;
  status)
    if running; then url; else exit 3; fi
    ;;
  lease)
    pid_argument "${2:-}"
    since=$(started_at "$2") || { say "no process $2 to lease the cluster to"; exit 2; }
    if ! running; then # (said before it starts: a lease cut short leaves it a session's)
      mkdir -p "$DIR"
      touch "$BY_SESSION"
    fi
    start_cluster
    mkdir -p "$LEASES"
    echo "$since" >"$LEASES/.$2" # hidden until whole: a lease is one file, whole or absent
    mv -f "$LEASES/.$2" "$LEASES/$2"
    url
    ;;
  release)
    pid_argument "${2:-}"
    rm -f "$LEASES/$2"
    others=$(live_leases)
    if [ -n "$others" ]; then
      say "left running for the test sessions using it (pids $(echo $others))"
    elif [ -f "$BY_SESSION" ]; then
      stop_cluster
    elif running; then
      say "left running: started by hand (scripts/postgres.sh start)"
    fi
    ;;
  *) say "usage: $0 start|stop|status|lease PID|release PID"; exit 2 ;;
esac
