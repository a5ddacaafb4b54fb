#!/bin/bash
# PostgreSQL started as an admin does (su postgres -c), 128 MB of shared_buffers and 200000
# rows, moved with `migrate --live -v` to a restartd in pid, IPC and mount namespaces of its
# own on this machine (its own socket directory there: the paths are free as on another
# node). For each run: migrate's frozen ms, the image bytes (what was not sent ahead), and
# whether psql there finds the rows, as postgres and as nobody (the socket file's mode).
# usage: bench/postgres-live.sh [CRS_BINARY]   (env RUNS=3). Needs root, Debian's postgresql.
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
RUNS=${RUNS:-3}
. ./lib.sh
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$BIN/postgres" ] && [ -x /usr/bin/psql ] || { echo "needs postgresql (apt install postgresql)" >&2; exit 1; }
work=$(mktemp -d /tmp/crs-pg.XXXXXX)
chmod 755 "$work"
mkdir "$work/sock"
chown -R postgres "$work"
gone() {
  pkill -9 -f "postgres -D $work/data" || true
  pkill -9 -f "restartd -b 127.0.0.1 -p 1023 --key $work/key" || true
  sleep 0.3
  for id in $(ipcs -m | awk '$3 == "postgres" && $6 == 0 {print $2}'); do ipcrm -m "$id" 2>/dev/null || true; done
}
# (The POSIX shared memory files a killed postgres leaves: those made from now on go at the end.)
ls /dev/shm > "$work/shm.before"
trap 'gone; for f in $(ls /dev/shm | grep "^PostgreSQL\." | grep -vxFf "$work/shm.before"); do rm -f "/dev/shm/$f"; done; rm -rf "$work"' EXIT
"$CRS" keygen "$work/key" >/dev/null
su postgres -s /bin/sh -c "$BIN/initdb -D $work/data -A trust --no-sync" >/dev/null
psql_as() { # user, pid whose mount namespace, sql
  { nsenter -t "$2" -m su "$1" -s /bin/sh -c "psql -h $work/sock -U postgres -d postgres -Atc \"$3\"" 2>&1 || true; } | tr '\n' ' '
}
echo "machine: $(nproc) cpus, $(uname -r); $($BIN/postgres --version), 128 MB shared_buffers, under su; migrate --live"
printf '%-4s %10s %12s %s\n' run frozen_ms image_bytes "psql there (postgres; nobody)"
for r in $(seq "$RUNS"); do
  gone
  rm -f "$work/data/postmaster.pid" "$work"/sock/.s.PGSQL*
  (bare setsid su postgres -s /bin/sh -c "exec $BIN/postgres -D $work/data -k $work/sock -c listen_addresses='' -c shared_buffers=128MB" </dev/null >"$work/pg.log" 2>&1 &)
  for _ in $(seq 100); do psql_as postgres $$ "SELECT 1" | grep -q '^1' && break; sleep 0.2; done
  psql_as postgres $$ "SELECT 1" | grep -q '^1' || { cat "$work/pg.log" >&2; exit 1; }
  [ "$r" = 1 ] && psql_as postgres $$ "CREATE TABLE t (n int, s text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200000) g" >/dev/null
  cat > "$work/rd.sh" <<EOT
mount -t tmpfs none $work/sock
chown postgres $work/sock
exec $CRS restartd -b 127.0.0.1 -p 1023 --key $work/key --allow-root
EOT
  (bare setsid unshare --pid --ipc --mount --propagation private --fork --mount-proc sh "$work/rd.sh" </dev/null >"$work/rd.log" 2>&1 &)
  for _ in $(seq 100); do grep -q listening "$work/rd.log" && break; sleep 0.05; done
  grep -q listening "$work/rd.log" || { cat "$work/rd.log" >&2; exit 1; }
  su=$(pgrep -f "^su postgres -s /bin/sh -c exec $BIN/postgres -D $work/data")
  out=$("$CRS" migrate -v --live --key "$work/key" "$su" 127.0.0.1 2>&1)
  line=$(echo "$out" | grep -E '^migrate: frozen [0-9.]+ ms, [0-9]+ bytes') || {
    echo "run $r: migrate did not say how long it froze the tree; it said:" >&2
    echo "$out" | tail -5 >&2
    exit 1
  }
  there=$(pgrep -f "restartd -b 127.0.0.1 -p 1023 --key $work/key" | tail -1)
  said="$(psql_as postgres "$there" "SELECT count(*) FROM t"); $(psql_as nobody "$there" "SELECT count(*) FROM t")"
  echo "$line" | awk -v r="$r" -v said="$said" '{gsub(/,/, ""); printf "%-4s %10s %12s %s\n", r, $3, $5, said}'
done
