#!/usr/bin/env bash
# Shared helpers for scripts/test and scripts/run: private, throwaway
# PostgreSQL and Redis instances that never touch the system services.
# Source it; do not execute it.
set -euo pipefail

# apt-get update is slow: do it at most once per script run.
DEPS_APT_UPDATED=${DEPS_APT_UPDATED:-0}

deps_log() { printf '%s\n' "$*" >&2; }

deps_fail() {
    printf 'error: %s\n' "$*" >&2
    return 1
}

# Runs a command as root: directly when we are root, else through sudo.
_deps_privileged() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        deps_fail "need root (or sudo) to run: $*"
    fi
}

# Installs Debian packages, running apt-get update only the first time.
_deps_apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        deps_fail "apt-get not found; install these packages by hand: $*" || return 1
    if [[ $DEPS_APT_UPDATED != 1 ]]; then
        deps_log "deps: apt-get update"
        _deps_privileged env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
            deps_fail "apt-get update failed" || return 1
        DEPS_APT_UPDATED=1
    fi
    deps_log "deps: apt-get install -y $*"
    _deps_privileged env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 ||
        deps_fail "apt-get install $* failed" || return 1
}

# Single-quotes a string for /bin/sh (pg_ctl passes -o through a shell).
_deps_shq() {
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

# Absolute path without requiring the path to exist yet.
_deps_abspath() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

free_port() {
    # The kernel hands out an unused port for port 0; racy but good enough.
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# True if nothing listens on 127.0.0.1:PORT (or on the wildcard address).
port_is_free() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
# Like the servers do, so a lingering TIME_WAIT does not count as busy.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

ensure_redis() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    deps_log "deps: redis-server not found, installing it"
    _deps_apt_install redis-server || deps_fail "could not install redis-server" || return 1
    # Debian may start its own service on 6379; we never use it.
    command -v redis-server >/dev/null 2>&1 ||
        deps_fail "redis-server still not on PATH after installing it"
}

# Debian's headless Chromium and its WebDriver, for the browser tests
# (tests/browser). Nothing is downloaded besides these two packages.
ensure_chromium() {
    if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
        return 0
    fi
    deps_log "deps: chromium or chromedriver not found, installing them"
    _deps_apt_install chromium chromium-driver ||
        deps_fail "could not install chromium and chromium-driver" || return 1
    [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] ||
        deps_fail "/usr/bin/chromium or /usr/bin/chromedriver still missing after installing them"
}

# Finds a PostgreSQL server bin dir without installing anything.
_deps_find_pg_bin() {
    local d
    if [[ -n ${PG_BIN:-} ]]; then
        [[ -x $PG_BIN/pg_ctl && -x $PG_BIN/initdb ]] && { printf '%s\n' "$PG_BIN"; return 0; }
        deps_fail "PG_BIN=$PG_BIN has no pg_ctl/initdb" || return 1
    fi
    if [[ -x /usr/lib/postgresql/15/bin/pg_ctl ]]; then
        printf '%s\n' /usr/lib/postgresql/15/bin
        return 0
    fi
    # Newest installed major version.
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
        sort -V | tail -n 1)
    if [[ -n $d && -x $d/pg_ctl ]]; then
        printf '%s\n' "$d"
        return 0
    fi
    return 1
}

pg_bin_dir() {
    if _deps_find_pg_bin; then
        return 0
    fi
    # An explicit but broken PG_BIN is a user error: do not paper over it.
    [[ -z ${PG_BIN:-} ]] || return 1
    deps_log "deps: no PostgreSQL server binaries found, trying to install postgresql"
    _deps_apt_install postgresql >/dev/null || true
    _deps_find_pg_bin ||
        deps_fail "no PostgreSQL server binaries (initdb, pg_ctl) found; set PG_BIN or install postgresql"
}

# Runs a PostgreSQL tool: as the postgres user when we are root, because
# PostgreSQL refuses to run as root. cd / so a private cwd does not warn.
_deps_as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Pids of processes whose cwd is DIR (a postmaster and its children chdir
# into the data dir, redis-server into its --dir).
_deps_pids_in_dir() {
    local dir p
    # Compare against the resolved path: /proc/*/cwd has symlinks resolved.
    dir=$(cd "$1" 2>/dev/null && pwd -P) || return 0
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/cwd" 2>/dev/null) == "$dir" ]] && printf '%s\n' "${p#/proc/}"
    done
    return 0
}

# Makes sure no server is still using DATA_DIR, and clears a stale
# postmaster.pid (from a killed run) whose pid may since have been reused.
_deps_pg_clear_stale() {
    local data=$1 pid pids i
    [[ -f $data/postmaster.pid ]] || return 0
    pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
    # Orphaned backends exit shortly after their postmaster dies: wait a bit.
    for ((i = 0; i < 50; i++)); do
        pids=$(_deps_pids_in_dir "$data")
        [[ -z $pids ]] && break
        if [[ -n $pid ]] && grep -qx "$pid" <<<"$pids"; then
            deps_fail "PostgreSQL is already running on $data (pid $pid); stop it first" || return 1
        fi
        sleep 0.2
    done
    [[ -z $pids ]] ||
        deps_fail "processes still use $data: $(tr '\n' ' ' <<<"$pids")" || return 1
    deps_log "deps: removing stale postmaster.pid from $data"
    rm -f "$data/postmaster.pid" "$data"/.s.PGSQL.*
}

# start_postgres DATA_DIR PORT
start_postgres() {
    local data port bin parent log sockdir opts
    data=$(_deps_abspath "${1:?start_postgres DATA_DIR PORT}")
    port=${2:?start_postgres DATA_DIR PORT}
    bin=$(pg_bin_dir) || return 1
    parent=$(dirname "$data")
    log=$parent/$(basename "$data").log

    # Parents must be traversable by the postgres user when we are root.
    (umask 022 && mkdir -p "$parent") || return 1
    if [[ ! -d $data ]]; then
        mkdir -m 700 "$data" || return 1
    fi
    touch "$log" || return 1
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 ||
            deps_fail "running as root but there is no 'postgres' user to run PostgreSQL as" || return 1
        if [[ ! -f $data/PG_VERSION ]]; then
            chown postgres: "$data" || return 1
        fi
        chown postgres: "$log" || return 1
        runuser -u postgres -- test -w "$data" ||
            deps_fail "user postgres cannot write $data (is a parent directory not traversable? try chmod o+x on it)" ||
            return 1
    fi

    if [[ ! -f $data/PG_VERSION ]]; then
        deps_log "deps: initdb $data"
        _deps_as_pg "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C \
            >>"$log" 2>&1 ||
            { tail -n 20 "$log" >&2; deps_fail "initdb failed (log: $log)"; return 1; }
    else
        _deps_pg_clear_stale "$data" || return 1
    fi

    # Unix socket paths are limited to ~107 bytes; TCP is all we need anyway.
    sockdir=$data
    if ((${#data} + 20 > 100)); then
        sockdir=
    fi
    # TCP on loopback only; socket in the data dir so it never clashes with
    # a system instance in /var/run/postgresql. fsync stays at its default.
    # Room for many test apps at once (each holds a pool of connections).
    opts="-c listen_addresses=127.0.0.1 -c port=$port -c max_connections=${PG_MAX_CONNECTIONS:-400} -c unix_socket_directories=$(_deps_shq "$sockdir")"
    if ! _deps_as_pg "$bin/pg_ctl" start -w -t 60 -D "$data" -l "$log" -o "$opts" >/dev/null; then
        tail -n 20 "$log" >&2
        deps_fail "PostgreSQL failed to start on 127.0.0.1:$port (log: $log)"
        return 1
    fi
}

# stop_postgres DATA_DIR: fast shutdown; quietly does nothing if not running.
stop_postgres() {
    local data bin
    data=$(_deps_abspath "${1:?stop_postgres DATA_DIR}")
    [[ -f $data/postmaster.pid ]] || return 0
    bin=$(_deps_find_pg_bin) || return 0
    if ! _deps_as_pg "$bin/pg_ctl" stop -w -t 30 -m fast -D "$data" >/dev/null 2>&1; then
        # Last resort so a trap never leaves a server behind.
        _deps_as_pg "$bin/pg_ctl" stop -w -t 10 -m immediate -D "$data" >/dev/null 2>&1 || true
    fi
    return 0
}

# pg_ensure_db PORT NAME: creates database NAME if it does not exist.
pg_ensure_db() {
    local port=$1 name=$2 bin psql
    bin=$(pg_bin_dir) || return 1
    psql=$bin/psql
    [[ -x $psql ]] || psql=psql
    # Through stdin, since psql does not interpolate :'name' in -c strings.
    if [[ $("$psql" -X -q -A -t -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -v name="$name" <<<"select 1 from pg_database where datname = :'name'") != 1 ]]; then
        "$psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
            -v name="$name" <<<'create database :"name"' ||
            deps_fail "could not create database $name" || return 1
    fi
}

# start_redis DIR PORT [APPENDONLY]: APPENDONLY is "no" (tests, default) or
# "yes" (scripts/run keeps data between runs).
start_redis() {
    local dir port aof pid i
    dir=$(_deps_abspath "${1:?start_redis DIR PORT [yes|no]}")
    port=${2:?start_redis DIR PORT [yes|no]}
    aof=${3:-no}
    mkdir -p "$dir" || return 1
    # A second redis on the same dir would clobber its files.
    if [[ -f $dir/redis.pid ]]; then
        pid=$(cat "$dir/redis.pid" 2>/dev/null || true)
        if [[ -n $pid ]] && grep -qx "$pid" <<<"$(_deps_pids_in_dir "$dir")"; then
            deps_fail "Redis is already running on $dir (pid $pid); stop it first" || return 1
        fi
    fi
    redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
        --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        --save "" --appendonly "$aof" >/dev/null ||
        deps_fail "redis-server failed to start (log: $dir/redis.log)" || return 1
    # Daemonized: poll until it answers (at most 10 s).
    for ((i = 0; i < 100; i++)); do
        if [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$dir/redis.log" >&2 || true
    deps_fail "Redis did not answer on 127.0.0.1:$port within 10 s (log: $dir/redis.log)"
}

# stop_redis DIR PORT: asks it to shut down, then falls back to its pidfile.
stop_redis() {
    local dir port pid i
    dir=$(_deps_abspath "${1:?stop_redis DIR PORT}")
    port=${2:?stop_redis DIR PORT}
    pid=$(cat "$dir/redis.pid" 2>/dev/null || true)
    # Only trust the pidfile if that pid really is our redis (pids get reused).
    if [[ -n $pid ]] && ! grep -qx "$pid" <<<"$(_deps_pids_in_dir "$dir")"; then
        pid=
    fi
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    [[ -n $pid ]] || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        if ((i == 50)); then
            kill -TERM "$pid" 2>/dev/null || true
        fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    return 0
}
