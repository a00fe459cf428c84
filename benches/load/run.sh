#!/usr/bin/env bash
# Side-by-side load comparison: wrk against the upstream-workers directly (a ceiling),
# through drover, through nginx and through HAProxy, all in front of the SAME worker
# processes, interleaved round by round. See docs/PERFORMANCE.md ("Load comparison
# harness") for what it measures and how to read the table.
#
#   benches/load/run.sh                         plain GET /, 3 rounds x 5 s, 64 connections
#   benches/load/run.sh --scenario body64k      64 KiB responses
#   benches/load/run.sh --scenario conns1000    1000 client connections
#   benches/load/run.sh --scenario kill9        kill -9 a worker mid-run, count errors
#   benches/load/run.sh --scenario ab,abk       ApacheBench (HTTP/1.0), without and with -k
#   benches/load/run.sh --scenario post1k,post64k   POST / with a 1 KiB or 64 KiB body
#   benches/load/run.sh --scenario chunk1k,chunk64k the same bodies, Transfer-Encoding: chunked
#   benches/load/run.sh --scenario tls,tlsnew,h2
#                                               HTTPS (one RSA-2048 certificate for all):
#                                               keep-alive, a new handshake per request, HTTP/2
#   benches/load/run.sh --scenario plain,sessions --variant sessions-memory --variant sessions-redis
#                                               drover plain vs drover+sessions in one run
#   benches/load/run.sh --help                  every option
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true # bash 5.2: keep '&' literal in ${x//a/b}

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SCRIPT_DIR/../.." && pwd)
TEMPLATES=$SCRIPT_DIR/templates
REPORT=$SCRIPT_DIR/report.py
DROVER_BIN=${DROVER_BIN:-$REPO/target/release/drover}
WORKER_BIN=${WORKER_BIN:-$REPO/target/release/upstream-worker}

ALL_TARGETS=(direct drover nginx haproxy)
ALL_SCENARIOS=(plain body64k conns1000 kill9 sessions ab abk post1k post64k chunk1k chunk64k tls tlsnew h2)
TLS_SCENARIOS=(tls tlsnew h2)
MAX_VARIANTS=5
STRATEGIES=(round_robin random least_connections weighted_round_robin latency consistent_hash)

# ---------------------------------------------------------------- options
SCENARIOS=plain
TARGETS=direct,drover,nginx,haproxy
ROUNDS=3
DURATION=5
CONNECTIONS=64
CONNECTIONS_SET=
WORKERS=2
STRATEGY=least_connections
WARMUP=1
DROVER_CONFIG=$TEMPLATES/drover.yaml.tmpl
DROVER_EXTRA=
OUT=
PORT_BASE=
KILL_SETTLE=2
SESSION_COOKIES=256
SYSCALLS=
VARIANT_NAMES=()
VARIANT_FILES=()
declare -A VARIANT_BINS=()

usage() {
    cat <<EOF
Usage: benches/load/run.sh [options]

Compares wrk results for: direct (straight at worker 0, a ceiling), drover, nginx and
HAProxy, all proxying to the same upstream-worker processes started by this script.
Progress goes to stderr; the Markdown summary goes to stdout.

Options:
  --scenario LIST      comma-separated: plain (GET /), body64k (GET /bytes?n=65536),
                       conns1000 (GET / with 1000 connections), kill9 (kill -9 one worker
                       half-way through every proxied run; report errors), sessions (GET /
                       with a Cookie header rotating over --session-cookies sessions; the
                       same headers for every target), ab and abk (GET / with
                       ApacheBench, HTTP/1.0: a connection per request, and -k keep-alive;
                       needs apache2-utils), post1k and post64k (POST / with a 1 KiB or
                       64 KiB body the worker reads whole), chunk1k and chunk64k (the
                       same bodies sent with Transfer-Encoding: chunked: one 1 KiB
                       chunk, or four 16 KiB chunks), tls (GET / over HTTPS with
                       keep-alive, wrk), tlsnew (GET / over HTTPS, Connection: close: a
                       new TLS handshake per request, wrk), h2 (GET / over HTTPS with
                       HTTP/2, h2load -c 32 -m 10; needs nghttp2-client). TLS scenarios
                       run drover, nginx and HAProxy only (no direct, no variants), all
                       with the same RSA-2048 certificate made by openssl. Default: plain
  --targets LIST       comma-separated subset of direct,drover,nginx,haproxy (default: all;
                       nginx/haproxy are skipped with a note if not installed)
  --rounds N           interleaved rounds A B C D A B C D ... (default 3)
  --duration S         seconds per wrk run (default 5)
  --connections N      wrk connections (default 64; conns1000 always uses 1000)
  --workers N          upstream-workers to start (default 2; kill9 needs >= 2)
  --strategy NAME      drover balancing.strategy (default least_connections):
                       ${STRATEGIES[*]}
  --warmup S           warm-up seconds per target before the first round (default 1)
  --drover-config FILE drover config template used instead of templates/drover.yaml.tmpl.
                       Must contain @LISTEN@ and @ADMIN_LISTEN@; @UPSTREAMS@, @STRATEGY@
                       and @RUNTIME_DIR@ are filled in too if present.
  --drover-extra FILE  YAML merged into every drover config (e.g. proxy:, health_check:):
                       each top-level block in FILE replaces the config's block of the
                       same key or is appended. listen, admin, runtime_dir and upstreams
                       belong to the harness and cannot be replaced.
  --variant NAME[=FILE] (repeatable, at most $MAX_VARIANTS) one more drover target labelled NAME,
                       on its own ports: the drover config plus FILE merged in the same way
                       (FILE defaults to templates/NAME.yaml, e.g. sessions-memory,
                       sessions-redis). If FILE contains @REDIS_URL@, a throw-away
                       redis-server is started on a free loopback port and its URL filled in.
                       The report adds NAME/drover and NAME/nginx ratios.
  --variant-bin NAME=PATH  the variant NAME runs the drover binary at PATH instead of
                       DROVER_BIN: an A/B of two builds in one interleaved run, e.g.
                       --variant before=benches/load/templates/same.yaml
                       --variant-bin before=/tmp/drover-before
  --session-cookies N  sessions per wrk run in the sessions scenario (default 256)
  --syscalls           count each proxy's system calls per request during every run
                       (perf stat -e raw_syscalls:sys_enter; needs linux-perf and tracefs)
  --out DIR            keep raw wrk outputs, rendered configs, logs and summary.md in DIR
                       (default: a temp dir that is removed at exit)
  --port-base P        ports P (drover), P+1 (nginx), P+2 (haproxy), P+3.. (variants),
                       P+9 (drover admin), P+10.. (variant admins), P+15 (redis),
                       P+20.. (workers). Default: first free block of 18080, 18180, ...
  -h, --help           this text

Environment: DROVER_BIN, WORKER_BIN override target/release/{drover,upstream-worker};
NGINX_BIN, HAPROXY_BIN override the nginx/haproxy found on PATH or in /usr/sbin.
EOF
}

die() {
    echo "run.sh: $*" >&2
    exit 1
}
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

need_arg() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case $1 in
    --scenario | --scenarios) need_arg "$@"; SCENARIOS=$2; shift 2 ;;
    --targets) need_arg "$@"; TARGETS=$2; shift 2 ;;
    --rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
    --duration) need_arg "$@"; DURATION=$2; shift 2 ;;
    --connections) need_arg "$@"; CONNECTIONS=$2; CONNECTIONS_SET=1; shift 2 ;;
    --workers) need_arg "$@"; WORKERS=$2; shift 2 ;;
    --strategy) need_arg "$@"; STRATEGY=$2; shift 2 ;;
    --warmup) need_arg "$@"; WARMUP=$2; shift 2 ;;
    --drover-config) need_arg "$@"; DROVER_CONFIG=$2; shift 2 ;;
    --drover-extra) need_arg "$@"; DROVER_EXTRA=$2; shift 2 ;;
    --variant)
        need_arg "$@"
        VARIANT_NAMES+=("${2%%=*}")
        if [[ $2 == *=* ]]; then VARIANT_FILES+=("${2#*=}"); else VARIANT_FILES+=("$TEMPLATES/$2.yaml"); fi
        shift 2
        ;;
    --variant-bin)
        need_arg "$@"
        [[ $2 == *=* ]] || die "--variant-bin needs NAME=PATH"
        VARIANT_BINS[${2%%=*}]=${2#*=}
        shift 2
        ;;
    --session-cookies) need_arg "$@"; SESSION_COOKIES=$2; shift 2 ;;
    --syscalls) SYSCALLS=1; shift ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --port-base) need_arg "$@"; PORT_BASE=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
    esac
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
contains() {
    local x=$1
    shift
    local y
    for y; do [[ $x == "$y" ]] && return 0; done
    return 1
}

is_uint "$ROUNDS" && ((ROUNDS >= 1)) || die "--rounds must be a positive integer"
is_uint "$DURATION" && ((DURATION >= 1)) || die "--duration must be a positive integer (seconds)"
is_uint "$CONNECTIONS" && ((CONNECTIONS >= 1)) || die "--connections must be a positive integer"
is_uint "$WORKERS" && ((WORKERS >= 1 && WORKERS <= 60)) || die "--workers must be 1..60"
is_uint "$WARMUP" || die "--warmup must be a non-negative integer (seconds)"
contains "$STRATEGY" "${STRATEGIES[@]}" || die "unknown --strategy '$STRATEGY' (one of: ${STRATEGIES[*]})"
[[ -z $PORT_BASE ]] || { is_uint "$PORT_BASE" && ((PORT_BASE >= 1024 && PORT_BASE <= 65400)); } ||
    die "--port-base must be 1024..65400"

IFS=, read -r -a SCENARIO_LIST <<<"$SCENARIOS"
for s in "${SCENARIO_LIST[@]}"; do
    [[ $s == breaker_ratelimit ]] && die "scenario breaker_ratelimit is not part of this harness"
    contains "$s" "${ALL_SCENARIOS[@]}" || die "unknown scenario '$s' (one of: ${ALL_SCENARIOS[*]})"
    if [[ $s == kill9 ]] && ((WORKERS < 2)); then die "scenario kill9 needs --workers >= 2"; fi
done
IFS=, read -r -a TARGET_REQ <<<"$TARGETS"
((${#TARGET_REQ[@]})) || die "--targets is empty"
for t in "${TARGET_REQ[@]}"; do
    contains "$t" "${ALL_TARGETS[@]}" || die "unknown target '$t' (one of: ${ALL_TARGETS[*]})"
done
[[ -f $DROVER_CONFIG ]] || die "--drover-config: no such file: $DROVER_CONFIG"
[[ -z $DROVER_EXTRA || -f $DROVER_EXTRA ]] || die "--drover-extra: no such file: $DROVER_EXTRA"
is_uint "$SESSION_COOKIES" && ((SESSION_COOKIES >= 1 && SESSION_COOKIES <= 100000)) ||
    die "--session-cookies must be 1..100000"
((${#VARIANT_NAMES[@]} <= MAX_VARIANTS)) || die "at most $MAX_VARIANTS --variant options"
NEED_REDIS=
for ((i = 0; i < ${#VARIANT_NAMES[@]}; i++)); do
    v=${VARIANT_NAMES[i]}
    [[ $v =~ ^[a-z][a-z0-9_-]{0,30}$ ]] || die "--variant name '$v' must be lowercase letters, digits, - or _"
    contains "$v" "${ALL_TARGETS[@]}" && die "--variant name '$v' is a built-in target"
    for ((j = 0; j < i; j++)); do [[ ${VARIANT_NAMES[j]} != "$v" ]] || die "--variant '$v' given twice"; done
    [[ -f ${VARIANT_FILES[i]} ]] || die "--variant $v: no such file: ${VARIANT_FILES[i]}"
    grep -q '@REDIS_URL@' "${VARIANT_FILES[i]}" && NEED_REDIS=1
done
for v in "${!VARIANT_BINS[@]}"; do
    contains "$v" "${VARIANT_NAMES[@]}" || die "--variant-bin $v: no --variant $v"
    [[ -x ${VARIANT_BINS[$v]} ]] || die "--variant-bin $v: not an executable: ${VARIANT_BINS[$v]}"
done

# ---------------------------------------------------------------- prerequisites
command -v wrk >/dev/null || die "wrk not found. Install it: apt-get install wrk (Debian/Ubuntu)"
NEED_TLS=
for s in "${SCENARIO_LIST[@]}"; do contains "$s" "${TLS_SCENARIOS[@]}" && NEED_TLS=1; done
if [[ -n $NEED_TLS ]]; then
    command -v openssl >/dev/null || die "TLS scenarios need openssl: apt-get install openssl"
fi
if [[ ,$SCENARIOS, == *,h2,* ]]; then
    command -v h2load >/dev/null || die "scenario h2 needs h2load: apt-get install nghttp2-client"
fi
if [[ ,$SCENARIOS, == *,ab,* || ,$SCENARIOS, == *,abk,* ]]; then
    command -v ab >/dev/null || die "ab not found. Install it: apt-get install apache2-utils (Debian/Ubuntu)"
fi
command -v python3 >/dev/null || die "python3 not found (used for parsing and the report)"
command -v curl >/dev/null || die "curl not found. Install it: apt-get install curl"
for b in "$DROVER_BIN" "$WORKER_BIN"; do
    [[ -x $b ]] || die "release binary missing: $b
Build it: (cd $REPO && cargo build --release --workspace)"
done
if [[ -n $SYSCALLS ]]; then
    command -v perf >/dev/null || die "--syscalls needs perf: apt-get install linux-perf"
    perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 ||
        die "--syscalls: perf cannot count raw_syscalls:sys_enter here (tracefs or permissions)"
fi
if [[ -n $NEED_REDIS ]]; then
    command -v redis-server >/dev/null || die "a --variant needs @REDIS_URL@ but redis-server is not installed: apt-get install redis-server"
fi

SKIPPED=()
TARGET_LIST=()
# find_bin NAME OVERRIDE: OVERRIDE if set (empty result if not executable), else PATH,
# else /usr/sbin (not on a normal user's PATH on Debian).
find_bin() {
    if [[ -n ${2+x} ]]; then
        [[ -x $2 ]] && echo "$2"
    elif command -v "$1" 2>/dev/null; then
        :
    elif [[ -x /usr/sbin/$1 ]]; then
        echo "/usr/sbin/$1"
    fi
    return 0
}
NGINX_BIN=$(find_bin nginx ${NGINX_BIN+"$NGINX_BIN"})
HAPROXY_BIN=$(find_bin haproxy ${HAPROXY_BIN+"$HAPROXY_BIN"})
for t in "${TARGET_REQ[@]}"; do
    contains "$t" "${TARGET_LIST[@]}" && continue
    if [[ $t == nginx && -z $NGINX_BIN ]]; then
        SKIPPED+=("nginx (not installed: apt-get install nginx)")
        log "skipping nginx: not installed"
        continue
    fi
    if [[ $t == haproxy && -z $HAPROXY_BIN ]]; then
        SKIPPED+=("haproxy (not installed: apt-get install haproxy)")
        log "skipping haproxy: not installed"
        continue
    fi
    TARGET_LIST+=("$t")
    # Variants run right after drover.
    [[ $t == drover ]] && TARGET_LIST+=("${VARIANT_NAMES[@]}")
done
contains drover "${TARGET_REQ[@]}" || TARGET_LIST+=("${VARIANT_NAMES[@]}")
((${#TARGET_LIST[@]})) || die "no target left to run"
has_target() { contains "$1" "${TARGET_LIST[@]}"; }
# drover-like targets: drover itself and its variants.
DROVERS=()
for t in "${TARGET_LIST[@]}"; do
    [[ $t == drover ]] || contains "$t" "${VARIANT_NAMES[@]}" && DROVERS+=("$t")
done

# ---------------------------------------------------------------- process tracking
STARTED_PIDS=() # direct children of this shell that we started
WORK=
CLEANED=

# Only ever signal a PID whose parent is this shell: after a child exits and bash reaps
# it, its PID could be reused by an unrelated process.
is_my_child() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    local f
    read -r -a f <<<"$s"
    [[ ${f[1]} == "$$" ]]
}
descendants() {
    local p
    for p in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$p"
        descendants "$p"
    done
}
forget_pid() {
    local keep=() p
    for p in "${STARTED_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    STARTED_PIDS=("${keep[@]}")
}
cleanup() {
    [[ -z $CLEANED ]] || return 0
    CLEANED=1
    trap - INT TERM
    local pid all=() p i alive
    # Collect every tree first, signal all at once, then wait once for all of them.
    for pid in "${STARTED_PIDS[@]}"; do
        is_my_child "$pid" || continue
        all+=("$pid")
        while read -r p; do [[ -n $p ]] && all+=("$p"); done < <(descendants "$pid")
    done
    if ((${#all[@]})); then
        kill -TERM "${all[@]}" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            alive=0
            for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        for p in "${all[@]}"; do
            if kill -0 "$p" 2>/dev/null; then
                echo "run.sh: pid $p ignored SIGTERM, sending SIGKILL" >&2
                kill -KILL "$p" 2>/dev/null || true
            fi
        done
        wait 2>/dev/null || true
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ -n $OUT && -d $OUT ]]; then
            mkdir -p "$OUT/logs" "$OUT/configs"
            cp "$WORK"/*.log "$OUT/logs/" 2>/dev/null || true
            cp "$WORK"/drover*.yaml "$WORK"/nginx.conf "$WORK"/haproxy.cfg "$WORK"/*.lua "$OUT/configs/" 2>/dev/null || true
        fi
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted, cleaning up" >&2; exit 130' INT
trap 'echo "run.sh: terminated, cleaning up" >&2; exit 143' TERM

LAST_PID=
# start_bg NAME LOGFILE CMD...: starts CMD in the background as a direct child.
start_bg() {
    local name=$1 logf=$2
    shift 2
    "$@" >"$logf" 2>&1 </dev/null &
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
    log "started $name (pid $LAST_PID)"
}

tail_log() {
    [[ -f $1 ]] || return 0
    echo "---- last lines of $(basename "$1") ----" >&2
    tail -n 20 "$1" >&2 || true
    echo "----" >&2
}

# wait_http URL SECONDS PID LOG: until URL answers 2xx; fail if PID dies or time runs out.
wait_http() {
    local url=$1 secs=$2 pid=$3 logf=$4 i
    for ((i = 0; i < secs * 10; i++)); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail_log "$logf"
            die "process $pid exited before $url answered"
        fi
        sleep 0.1
    done
    tail_log "$logf"
    die "$url did not answer within ${secs}s"
}

# ---------------------------------------------------------------- temp dir, limits, ports
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drover-load.XXXXXX")
RAW=$WORK/raw
if [[ -n $OUT ]]; then
    mkdir -p "$OUT/raw" || die "cannot create --out $OUT"
    OUT=$(cd -- "$OUT" && pwd)
    RAW=$OUT/raw
fi
mkdir -p "$RAW" "$WORK/nginx-tmp" && mkdir -p -m 700 "$WORK/run"
RUNS_TSV=$WORK/runs.tsv
: >"$RUNS_TSV"

# More file descriptors for conns1000 (inherited by every process started below).
HARD_NOFILE=$(ulimit -Hn)
[[ $HARD_NOFILE == unlimited ]] && HARD_NOFILE=1048576
WANT_NOFILE=$((HARD_NOFILE < 65536 ? HARD_NOFILE : 65536))
ulimit -n "$WANT_NOFILE" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=65536

MAX_CONNS=$CONNECTIONS
contains conns1000 "${SCENARIO_LIST[@]}" && ((MAX_CONNS < 1000)) && MAX_CONNS=1000
if ((NOFILE < 2 * MAX_CONNS + 256)); then
    log "warning: open-file limit is $NOFILE, low for $MAX_CONNS connections (raise ulimit -n)"
fi

port_busy() {
    if command -v ss >/dev/null; then
        [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}
block_free() {
    local b=$1 i
    for p in "$b" $((b + 1)) $((b + 2)) $((b + 9)); do port_busy "$p" && return 1; done
    for ((i = 0; i < ${#VARIANT_NAMES[@]}; i++)); do
        port_busy $((b + 3 + i)) && return 1
        port_busy $((b + 10 + i)) && return 1
    done
    [[ -z $NEED_REDIS ]] || ! port_busy $((b + 15)) || return 1
    if [[ -n $NEED_TLS ]]; then
        for p in $((b + 16)) $((b + 17)) $((b + 18)); do port_busy "$p" && return 1; done
    fi
    for ((i = 0; i < WORKERS; i++)); do port_busy $((b + 20 + i)) && return 1; done
    return 0
}
if [[ -n $PORT_BASE ]]; then
    block_free "$PORT_BASE" || die "a port in $PORT_BASE..$((PORT_BASE + 20 + WORKERS)) is in use; pick another --port-base"
else
    for b in 18080 18180 18280 18380 18480 18580 18680 18780 18880 18980; do
        if block_free "$b"; then PORT_BASE=$b; break; fi
    done
    [[ -n $PORT_BASE ]] || die "no free port block found in 18080..19100; pass --port-base"
fi
DROVER_PORT=$PORT_BASE
NGINX_PORT=$((PORT_BASE + 1))
HAPROXY_PORT=$((PORT_BASE + 2))
ADMIN_PORT=$((PORT_BASE + 9))
REDIS_PORT=$((PORT_BASE + 15))
# HTTPS listeners of the TLS scenarios.
declare -A TLS_PORT=([drover]=$((PORT_BASE + 16)) [nginx]=$((PORT_BASE + 17)) [haproxy]=$((PORT_BASE + 18)))
WORKER_PORTS=()
for ((i = 0; i < WORKERS; i++)); do WORKER_PORTS+=($((PORT_BASE + 20 + i))); done
# Per drover-like target: listen port, admin port, pid, rendered config.
declare -A T_PORT T_ADMIN T_PID T_CONF
T_PORT[drover]=$DROVER_PORT
T_ADMIN[drover]=$ADMIN_PORT
T_CONF[drover]=$WORK/drover.yaml
for ((i = 0; i < ${#VARIANT_NAMES[@]}; i++)); do
    v=${VARIANT_NAMES[i]}
    T_PORT[$v]=$((PORT_BASE + 3 + i))
    T_ADMIN[$v]=$((PORT_BASE + 10 + i))
    T_CONF[$v]=$WORK/drover-$v.yaml
done

# Overall bound: if something hangs anyway, the watchdog ends the script (and cleanup
# runs). Every wrk run has its own timeout as well.
PER_RUN=$((DURATION + 4))
contains kill9 "${SCENARIO_LIST[@]}" && PER_RUN=$((PER_RUN + KILL_SETTLE + 10))
EST=$((60 + ${#SCENARIO_LIST[@]} * ${#TARGET_LIST[@]} * (WARMUP + 2 + ROUNDS * PER_RUN)))
LIMIT=$((2 * EST + 60))
(
    sleep "$LIMIT"
    echo "run.sh: watchdog: still running after ${LIMIT}s, aborting" >&2
    kill -TERM $$
) &
STARTED_PIDS+=("$!")
vports=""
for v in "${VARIANT_NAMES[@]}"; do vports+=", $v ${T_PORT[$v]} (admin ${T_ADMIN[$v]})"; done
log "ports: drover $DROVER_PORT (admin $ADMIN_PORT)$vports, nginx $NGINX_PORT, haproxy $HAPROXY_PORT, workers ${WORKER_PORTS[*]}${NEED_REDIS:+, redis $REDIS_PORT}; time limit ${LIMIT}s"

# render TEMPLATE OUT KEY VALUE [KEY VALUE ...]: replaces every @KEY@ with VALUE.
render() {
    local tmpl=$1 out=$2 text
    shift 2
    text=$(<"$tmpl")
    while [[ $# -ge 2 ]]; do
        text=${text//@$1@/$2}
        shift 2
    done
    printf '%s\n' "$text" >"$out"
}

# ---------------------------------------------------------------- configs
# Rendered and checked before anything starts, so a bad config fails fast.

# One certificate for every TLS target: RSA-2048 (what most sites still serve), made
# here, self-signed; wrk and h2load do not verify it.
if [[ -n $NEED_TLS ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/tls.key" -out "$WORK/tls.pem" \
        -days 2 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        >"$WORK/openssl.log" 2>&1 || { cat "$WORK/openssl.log" >&2; die "openssl could not make the test certificate"; }
    chmod 600 "$WORK/tls.key"
    cat "$WORK/tls.pem" "$WORK/tls.key" >"$WORK/haproxy-tls.pem"
    chmod 600 "$WORK/haproxy-tls.pem"
    printf 'tls:\n  listen: [127.0.0.1:%s]\n  certificates:\n    - cert_file: %s\n      key_file: %s\n' \
        "${TLS_PORT[drover]}" "$WORK/tls.pem" "$WORK/tls.key" >"$WORK/drover-tls.yaml"
fi

# drover and its variants
DROVER_PID=
if ((${#DROVERS[@]})); then
    grep -q '@LISTEN@' "$DROVER_CONFIG" && grep -q '@ADMIN_LISTEN@' "$DROVER_CONFIG" ||
        die "$DROVER_CONFIG must contain the @LISTEN@ and @ADMIN_LISTEN@ placeholders"
    grep -q '@UPSTREAMS@' "$DROVER_CONFIG" ||
        log "warning: $DROVER_CONFIG has no @UPSTREAMS@: drover will not use the shared workers"
    upstreams=""
    for p in "${WORKER_PORTS[@]}"; do upstreams+="  - address: 127.0.0.1:$p"$'\n'; done
fi
# merge_into CONF FILE: FILE's top-level blocks replace CONF's (report.py merge).
merge_into() {
    python3 "$REPORT" merge "$1" "$2" >"$1.merged" || die "cannot merge $2 into the drover config"
    mv "$1.merged" "$1"
}
for t in "${DROVERS[@]}"; do
    conf=${T_CONF[$t]}
    mkdir -p -m 700 "$WORK/run-$t" # drover refuses a runtime_dir others can enter
    render "$DROVER_CONFIG" "$conf" \
        LISTEN "127.0.0.1:${T_PORT[$t]}" ADMIN_LISTEN "127.0.0.1:${T_ADMIN[$t]}" \
        RUNTIME_DIR "$WORK/run-$t" UPSTREAMS "${upstreams%$'\n'}" STRATEGY "$STRATEGY"
    [[ -z $DROVER_EXTRA ]] || merge_into "$conf" "$DROVER_EXTRA"
    [[ -z $NEED_TLS || $t != drover ]] || merge_into "$conf" "$WORK/drover-tls.yaml"
    if [[ $t != drover ]]; then
        for ((i = 0; i < ${#VARIANT_NAMES[@]}; i++)); do
            [[ ${VARIANT_NAMES[i]} == "$t" ]] || continue
            render "${VARIANT_FILES[i]}" "$WORK/variant-$t.yaml" REDIS_URL "redis://127.0.0.1:$REDIS_PORT/"
            merge_into "$conf" "$WORK/variant-$t.yaml"
        done
    fi
    if ! "${VARIANT_BINS[$t]:-$DROVER_BIN}" -t -c "$conf" >"$WORK/drover-$t-check.log" 2>&1; then
        cat "$WORK/drover-$t-check.log" >&2
        die "drover rejected the generated config for $t (above; kept with --out)"
    fi
done

# nginx
NGINX_PID=
if has_target nginx; then
    servers=""
    for p in "${WORKER_PORTS[@]}"; do servers+="        server 127.0.0.1:$p;"$'\n'; done
    user_line="# (not root: no user directive)"
    # As root nginx would switch its worker to 'nobody', which cannot enter the 0700
    # temp dir; the worker stays root instead (loopback-only benchmark).
    ((EUID == 0)) && user_line="user root;"
    tls_lines="# (no TLS scenario)"
    if [[ -n $NEED_TLS ]]; then
        tls_lines="listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2 reuseport;
        ssl_certificate $WORK/tls.pem;
        ssl_certificate_key $WORK/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;"
    fi
    render "$TEMPLATES/nginx.conf.tmpl" "$WORK/nginx.conf" \
        TLS_LINES "$tls_lines" \
        USER_LINE "$user_line" DIR "$WORK" NOFILE "$NOFILE" \
        WORKER_CONNECTIONS $((2 * MAX_CONNS + 256)) SERVERS "${servers%$'\n'}" \
        KEEPALIVE "$MAX_CONNS" LISTEN "127.0.0.1:$NGINX_PORT"
    if ! "$NGINX_BIN" -t -q -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf" >"$WORK/nginx-check.log" 2>&1; then
        cat "$WORK/nginx-check.log" >&2
        tail_log "$WORK/nginx-error.log"
        die "nginx rejected the generated config"
    fi
fi

# haproxy
HAPROXY_PID=
if has_target haproxy; then
    servers=""
    for ((i = 0; i < WORKERS; i++)); do servers+="    server w$i 127.0.0.1:${WORKER_PORTS[i]}"$'\n'; done
    tls_bind="# (no TLS scenario)"
    [[ -z $NEED_TLS ]] || tls_bind="bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $WORK/haproxy-tls.pem alpn h2,http/1.1"
    render "$TEMPLATES/haproxy.cfg.tmpl" "$WORK/haproxy.cfg" TLS_BIND "$tls_bind" \
        MAXCONN $((MAX_CONNS + 256)) LISTEN "127.0.0.1:$HAPROXY_PORT" SERVERS "${servers%$'\n'}"
    if ! "$HAPROXY_BIN" -c -q -f "$WORK/haproxy.cfg" >"$WORK/haproxy-check.log" 2>&1; then
        cat "$WORK/haproxy-check.log" >&2
        die "haproxy rejected the generated config"
    fi
fi

# ---------------------------------------------------------------- upstream workers
WORKER_PIDS=()
WORKER_STARTS=()
start_worker() {
    local i=$1 logf
    WORKER_STARTS[i]=$((${WORKER_STARTS[i]:-0} + 1))
    logf=$WORK/worker-$i.log
    ((WORKER_STARTS[i] == 1)) || logf=$WORK/worker-$i.start${WORKER_STARTS[i]}.log
    start_bg "upstream-worker $i" "$logf" \
        env PORT="${WORKER_PORTS[i]}" WORKER_ID="$i" BIND=127.0.0.1 DROVER_PARENT_PID=$$ "$WORKER_BIN"
    WORKER_PIDS[i]=$LAST_PID
    wait_http "http://127.0.0.1:${WORKER_PORTS[i]}/health" 10 "$LAST_PID" "$logf"
}
for ((i = 0; i < WORKERS; i++)); do start_worker "$i"; done

# ---------------------------------------------------------------- redis (for variants)
if [[ -n $NEED_REDIS ]]; then
    mkdir -p "$WORK/redis"
    start_bg redis-server "$WORK/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save "" --appendonly no --dir "$WORK/redis" --protected-mode yes
    REDIS_PID=$LAST_PID
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break
        kill -0 "$REDIS_PID" 2>/dev/null || { tail_log "$WORK/redis.log"; die "redis-server exited"; }
        sleep 0.1
    done
fi

# ---------------------------------------------------------------- proxies
for t in "${DROVERS[@]}"; do
    logf=$WORK/drover.log
    [[ $t == drover ]] || logf=$WORK/drover-$t.log
    start_bg "$t" "$logf" "${VARIANT_BINS[$t]:-$DROVER_BIN}" -c "${T_CONF[$t]}"
    T_PID[$t]=$LAST_PID
    [[ $t == drover ]] && DROVER_PID=$LAST_PID
    wait_http "http://127.0.0.1:${T_ADMIN[$t]}/readyz" 15 "$LAST_PID" "$logf"
    wait_http "http://127.0.0.1:${T_PORT[$t]}/" 10 "$LAST_PID" "$logf"
done

# Waits (bounded) until every drover's admin API shows every backend healthy.
drover_wait_healthy() {
    local i t
    for t in "${DROVERS[@]}"; do
        for ((i = 0; i < 100; i++)); do
            if curl -fsS --max-time 1 "http://127.0.0.1:${T_ADMIN[$t]}/api/status" 2>/dev/null |
                python3 "$REPORT" drover-healthy; then
                break
            fi
            sleep 0.1
        done
        ((i < 100)) || log "warning: $t does not report every backend healthy after 10s"
    done
}
drover_wait_healthy

if has_target nginx; then
    start_bg nginx "$WORK/nginx-stdout.log" "$NGINX_BIN" -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf"
    NGINX_PID=$LAST_PID
    wait_http "http://127.0.0.1:$NGINX_PORT/" 10 "$NGINX_PID" "$WORK/nginx-error.log"
fi

if has_target haproxy; then
    start_bg haproxy "$WORK/haproxy.log" "$HAPROXY_BIN" -db -f "$WORK/haproxy.cfg"
    HAPROXY_PID=$LAST_PID
    wait_http "http://127.0.0.1:$HAPROXY_PORT/" 10 "$HAPROXY_PID" "$WORK/haproxy.log"
fi

# ---------------------------------------------------------------- measuring
CLK_TCK=$(getconf CLK_TCK)

target_url() {
    case $1 in
    direct) echo "http://127.0.0.1:${WORKER_PORTS[0]}" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT" ;;
    haproxy) echo "http://127.0.0.1:$HAPROXY_PORT" ;;
    *) echo "http://127.0.0.1:${T_PORT[$1]}" ;;
    esac
}
# PIDs whose CPU time is charged to a target: nginx is master + workers.
target_pids() {
    case $1 in
    nginx) echo "$NGINX_PID" $(pgrep -P "$NGINX_PID" 2>/dev/null || true) ;;
    haproxy) echo "$HAPROXY_PID" ;;
    direct) ;;
    *) echo "${T_PID[$1]}" ;;
    esac
}
# Sums of utime+stime and of utime (clock ticks) over the given PIDs, from /proc/PID/stat.
cpu_ticks() {
    local total=0 user=0 pid s f
    for pid; do
        s=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        s=${s##*) }
        read -r -a f <<<"$s"
        total=$((total + f[11] + f[12]))
        user=$((user + f[11]))
    done
    echo "$total $user"
}
check_alive() {
    local t=$1 pid
    for pid in $(target_pids "$t"); do
        kill -0 "$pid" 2>/dev/null || die "$t (pid $pid) died; see its log"
    done
}

# run_wrk OUTFILE CONNS SECONDS URL [LUA_SCRIPT] [HEADER]
run_wrk() {
    local outf=$1 conns=$2 secs=$3 url=$4 threads=1 script=() header=()
    [[ -z ${5:-} ]] || script=(-s "$5")
    [[ -z ${6:-} ]] || header=(-H "$6")
    if ! timeout --foreground -k 5 $((secs + 30)) \
        wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "${header[@]}" "${script[@]}" "$url" >"$outf" 2>&1; then
        log "warning: wrk exited non-zero (see $outf)"
    fi
}

# run_ab OUTFILE CONNS SECONDS URL KEEPALIVE: ApacheBench for SECONDS (its output is read
# by report.py like wrk's).
run_ab() {
    local outf=$1 conns=$2 secs=$3 url=$4 k=()
    [[ $5 == yes ]] && k=(-k)
    if ! timeout --foreground -k 5 $((secs + 30)) \
        ab -q "${k[@]}" -c "$conns" -t "$secs" -n 100000000 -s 10 "$url" >"$outf" 2>&1; then
        log "warning: ab exited non-zero (see $outf)"
    fi
}

# run_h2load OUTFILE CONNS SECONDS URL: HTTP/2 over TLS, 10 streams per connection.
run_h2load() {
    local outf=$1 conns=$2 secs=$3 url=$4
    if ! timeout --foreground -k 5 $((secs + 30)) \
        h2load -c "$conns" -m 10 -t 1 -D "$secs" "$url" >"$outf" 2>&1; then
        log "warning: h2load exited non-zero (see $outf)"
    fi
}

# run_client SCENARIO OUTFILE CONNS SECONDS URL [LUA_SCRIPT]: wrk, ab for ab/abk, h2load
# for h2.
run_client() {
    local scenario=$1
    shift
    case $scenario in
    ab) run_ab "$1" "$2" "$3" "$4" no ;;
    abk) run_ab "$1" "$2" "$3" "$4" yes ;;
    h2) run_h2load "$1" "$2" "$3" "$4" ;;
    tlsnew) run_wrk "$1" "$2" "$3" "$4" "" "Connection: close" ;;
    *) run_wrk "$@" ;;
    esac
}

# The URL a scenario reaches a target at: its HTTPS listener for the TLS scenarios.
scenario_url() {
    if contains "$1" "${TLS_SCENARIOS[@]}"; then
        echo "https://127.0.0.1:${TLS_PORT[$2]}"
    else
        target_url "$2"
    fi
}

scenario_path() {
    case $1 in
    body64k) echo "/bytes?n=65536" ;;
    *) echo "/" ;;
    esac
}
scenario_conns() {
    if [[ $1 == conns1000 ]]; then
        echo 1000
    elif [[ $1 == h2 && -z $CONNECTIONS_SET ]]; then
        echo 32
    else
        echo "$CONNECTIONS"
    fi
}
export BENCH_DESC_tls="GET / over HTTPS (TLS 1.3, RSA-2048), keep-alive"
export BENCH_DESC_tlsnew="GET / over HTTPS with Connection: close: a new TCP connection and full TLS 1.3 handshake (RSA-2048) per request"
export BENCH_DESC_h2="GET / over HTTPS with HTTP/2, h2load -m 10 (10 streams per connection); p50 column: h2load's mean, no p99"

export BENCH_DESC_plain="GET / (small body)"
export BENCH_DESC_body64k="GET /bytes?n=65536 (64 KiB body)"
export BENCH_DESC_conns1000="GET / with 1000 connections"
export BENCH_DESC_ab="GET / with ApacheBench (HTTP/1.0, a new connection per request)"
export BENCH_DESC_post1k="POST / with a 1 KiB body (Content-Length), read whole by the worker"
export BENCH_DESC_post64k="POST / with a 64 KiB body (Content-Length), read whole by the worker"
export BENCH_DESC_chunk1k="POST / with a 1 KiB body (Transfer-Encoding: chunked, one chunk), read whole by the worker"
export BENCH_DESC_chunk64k="POST / with a 64 KiB body (Transfer-Encoding: chunked, four 16 KiB chunks), read whole by the worker"
export BENCH_DESC_abk="GET / with ApacheBench -k (HTTP/1.0 with Connection: keep-alive)"
export BENCH_DESC_sessions="GET / with one of $SESSION_COOKIES session cookies per request, in turn (the same headers to every target; each sessions variant gets cookies it issued itself)"

# sessions scenario: one wrk script per target. A target that sets a cookie (a drover
# with sessions on) gets SESSION_COOKIES cookies it issued; every other target is sent
# the first such set (ignored there), so all targets see requests of the same shape.
declare -A T_LUA
prepare_session_scripts() {
    local t rc first=
    for t in "${TARGET_LIST[@]}"; do
        rc=0
        python3 "$REPORT" cookies "$(target_url "$t")/" "$SESSION_COOKIES" >"$WORK/cookies-$t.txt" || rc=$?
        case $rc in
        0)
            log "  sessions: $SESSION_COOKIES cookies issued by $t"
            [[ -n $first ]] || first=$WORK/cookies-$t.txt
            python3 "$REPORT" lua "$WORK/cookies-$t.txt" >"$WORK/sessions-$t.lua" || die "cannot write the wrk script for $t"
            T_LUA[$t]=$WORK/sessions-$t.lua
            if [[ -n ${T_ADMIN[$t]:-} ]]; then
                log "  sessions on $t: $(curl -fsS --max-time 2 "http://127.0.0.1:${T_ADMIN[$t]}/api/sessions" 2>/dev/null |
                    python3 -c 'import json,sys; d=json.load(sys.stdin); print("store", d.get("store"), "active", d.get("active"), "per worker", d.get("per_worker"))' 2>/dev/null || echo "(no /api/sessions)")"
            fi
            ;;
        3) ;;
        *) die "collecting session cookies from $t failed" ;;
        esac
    done
    if [[ -z $first ]]; then
        # No target issues cookies: same-shape placeholders (54-character values).
        first=$WORK/cookies-placeholder.txt
        python3 -c "import sys
for i in range(int(sys.argv[1])): print('drover_session=%054d' % i)" "$SESSION_COOKIES" >"$first"
        log "  sessions: no target sets a session cookie (no --variant with sessions?); sending placeholders"
    fi
    for t in "${TARGET_LIST[@]}"; do
        [[ -n ${T_LUA[$t]:-} ]] && continue
        python3 "$REPORT" lua "$first" >"$WORK/sessions-$t.lua" || die "cannot write the wrk script for $t"
        T_LUA[$t]=$WORK/sessions-$t.lua
    done
}
scenario_script() {
    case $1 in
    sessions) echo "${T_LUA[$2]}" ;;
    post1k | post64k)
        local n=1024
        [[ $1 == post64k ]] && n=65536
        [[ -f $WORK/post-$n.lua ]] || python3 "$REPORT" post-lua "$n" >"$WORK/post-$n.lua"
        echo "$WORK/post-$n.lua"
        ;;
    chunk1k | chunk64k)
        local n=1024 pieces=1
        [[ $1 == chunk64k ]] && n=65536 pieces=4
        [[ -f $WORK/chunk-$n.lua ]] || python3 "$REPORT" post-lua "$n" "$pieces" >"$WORK/chunk-$n.lua"
        echo "$WORK/chunk-$n.lua"
        ;;
    esac
}
export BENCH_DESC_kill9="GET /, worker $((WORKERS - 1)) killed with SIGKILL half-way through each proxied run and restarted before the next run; errors are what wrk saw (non-2xx + socket errors); req/s here is not a throughput figure"

# True once PID has exited (gone, or a zombie not yet reaped).
pid_gone() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    s=${s##*) }
    [[ ${s:0:1} == Z ]]
}

# kill9: kill the last worker (never worker 0, which 'direct' uses) mid-run, then restart
# it and wait until the proxies have it back before the next target runs.
restart_worker() {
    local i=$1 old n
    old=${WORKER_PIDS[i]}
    for ((n = 0; n < 50; n++)); do pid_gone "$old" && break; sleep 0.1; done
    pid_gone "$old" || die "worker $i (pid $old) survived kill -9"
    forget_pid "$old"
    start_worker "$i"
    drover_wait_healthy
    sleep "$KILL_SETTLE" # HAProxy checks every 1s (rise 1); nginx has passive checks only
}

for scenario in "${SCENARIO_LIST[@]}"; do
    path=$(scenario_path "$scenario")
    conns=$(scenario_conns "$scenario")
    if [[ $scenario == conns1000 && -n $CONNECTIONS_SET ]]; then
        log "note: conns1000 uses 1000 connections regardless of --connections"
    fi
    targets=("${TARGET_LIST[@]}")
    if contains "$scenario" "${TLS_SCENARIOS[@]}"; then
        targets=()
        for t in drover nginx haproxy; do has_target "$t" && targets+=("$t"); done
        ((${#targets[@]})) || { log "$scenario: no TLS target selected, skipping"; continue; }
    fi
    if [[ $scenario == kill9 ]] && has_target direct; then
        log "kill9: skipping 'direct' (it only talks to worker 0, which is never killed)"
        targets=()
        for t in "${TARGET_LIST[@]}"; do [[ $t == direct ]] || targets+=("$t"); done
        ((${#targets[@]})) || { log "kill9: no proxy target selected, skipping"; continue; }
    fi
    log "scenario $scenario: GET $path, $conns connections, ${DURATION}s x $ROUNDS rounds, targets ${targets[*]}"
    [[ $scenario != sessions ]] || prepare_session_scripts
    if ((WARMUP > 0)); then
        for t in "${targets[@]}"; do
            log "  warm-up $t (${WARMUP}s)"
            run_client "$scenario" "$RAW/$scenario-$t-warmup.txt" "$conns" "$WARMUP" "$(scenario_url "$scenario" "$t")$path" "$(scenario_script "$scenario" "$t")"
        done
    fi
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in "${targets[@]}"; do
            outf=$RAW/$scenario-$t-r$round.txt
            pids=$(target_pids "$t")
            before=-
            [[ -n $pids ]] && read -r before before_u < <(cpu_ticks $pids)
            perf_out=
            if [[ -n $SYSCALLS && -n $pids ]]; then
                perf_out=$RAW/$scenario-$t-r$round.syscalls
                perf stat -x, -e raw_syscalls:sys_enter -p "$(echo $pids | tr ' ' ,)" -o "$perf_out" \
                    -- sleep "$DURATION" >/dev/null 2>&1 &
                perf_pid=$!
                STARTED_PIDS+=("$perf_pid")
            fi
            note=
            killer=
            if [[ $scenario == kill9 ]]; then
                victim=$((WORKERS - 1))
                vpid=${WORKER_PIDS[victim]}
                # Disowned so bash does not print a "Killed" job notice; cleanup still
                # finds it through STARTED_PIDS until restart_worker forgets it.
                disown "$vpid" 2>/dev/null || true
                half=$(python3 -c "print($DURATION / 2)")
                (
                    sleep "$half"
                    kill -KILL "$vpid" 2>/dev/null || true
                ) &
                killer=$!
                STARTED_PIDS+=("$killer")
                note="killed worker $victim (pid $vpid) at ${half}s"
            fi
            run_client "$scenario" "$outf" "$conns" "$DURATION" "$(scenario_url "$scenario" "$t")$path" "$(scenario_script "$scenario" "$t")"
            ticks=-
            uticks=-
            if [[ -n $pids ]]; then
                read -r after after_u < <(cpu_ticks $pids)
                ticks=$((after - before))
                uticks=$((after_u - before_u))
            fi
            syscalls=-
            if [[ -n $perf_out ]]; then
                wait "$perf_pid" 2>/dev/null || true
                forget_pid "$perf_pid"
                syscalls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1; exit}' "$perf_out" 2>/dev/null)
                [[ $syscalls =~ ^[0-9]+$ ]] || syscalls=-
            fi
            if [[ -n $killer ]]; then
                wait "$killer" 2>/dev/null || true
                forget_pid "$killer"
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$t" "$round" "$outf" "$ticks" "$CLK_TCK" "$note" "$uticks" "$syscalls" >>"$RUNS_TSV"
            log "  round $round $t: $(python3 "$REPORT" line "$outf" "$ticks" "$CLK_TCK")"
            if [[ $scenario == kill9 ]]; then
                restart_worker "$victim"
            fi
            [[ $t == direct ]] || check_alive "$t"
        done
    done
done

# ---------------------------------------------------------------- report
nginx_v=$({ "${NGINX_BIN:-false}" -v 2>&1 || true; } | head -n1)
haproxy_v=$({ "${HAPROXY_BIN:-false}" -v 2>&1 || true; } | head -n1 | awk '{print $1, $2, $3}')
wrk_v=$({ wrk -v 2>&1 || true; } | head -n1 | awk '{print $1, $2}')
git_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null || true) ]] && git_rev+="+dirty"
export BENCH_VERSIONS="drover $git_rev; $wrk_v${NGINX_PID:+; $nginx_v}${HAPROXY_PID:+; $haproxy_v}"
conns_txt="-c$CONNECTIONS"
contains conns1000 "${SCENARIO_LIST[@]}" && conns_txt+=" (conns1000: -c1000)"
setup="wrk -t1 $conns_txt --latency, ${DURATION}s per run, $ROUNDS interleaved round(s), ${WARMUP}s warm-up per target; $WORKERS upstream-workers shared by all targets"
contains h2 "${SCENARIO_LIST[@]}" && setup+="; h2: h2load -t1 -c$(scenario_conns h2) -m10"
[[ -z $NEED_TLS ]] || setup+="; TLS scenarios: one RSA-2048 self-signed certificate for drover, nginx (ssl http2) and HAProxy (ssl alpn h2,http/1.1)"
if ((${#DROVERS[@]})); then
    setup+="; drover threads 1, strategy $STRATEGY"
    [[ $DROVER_CONFIG == "$TEMPLATES/drover.yaml.tmpl" ]] || setup+=", config $DROVER_CONFIG"
    [[ -z $DROVER_EXTRA ]] || setup+=", extra $DROVER_EXTRA"
    for ((i = 0; i < ${#VARIANT_NAMES[@]}; i++)); do
        setup+="; variant ${VARIANT_NAMES[i]} = drover + ${VARIANT_FILES[i]#"$REPO"/}"
        [[ -z ${VARIANT_BINS[${VARIANT_NAMES[i]}]:-} ]] || setup+=" (binary ${VARIANT_BINS[${VARIANT_NAMES[i]}]})"
    done
    [[ -z $NEED_REDIS ]] || setup+=" (redis-server $(redis-server --version | grep -oE 'v=[0-9.]+' | cut -c3-) on loopback, no persistence)"
fi
[[ -z $NGINX_PID ]] || setup+="; nginx 1 worker, least_conn"
[[ -z $HAPROXY_PID ]] || setup+="; HAProxy nbthread 1, leastconn"
export BENCH_SETUP="$setup; medians over rounds, errors summed"
BENCH_VARIANTS=$(IFS=,; echo "${VARIANT_NAMES[*]}")
export BENCH_VARIANTS
if ((${#SKIPPED[@]})); then
    BENCH_SKIPPED=$(IFS=';'; echo "${SKIPPED[*]}")
    export BENCH_SKIPPED
fi

echo >&2
if [[ -n $OUT ]]; then
    cp "$RUNS_TSV" "$OUT/runs.tsv"
    python3 "$REPORT" table "$RUNS_TSV" | tee "$OUT/summary.md"
    log "raw wrk outputs, configs and logs kept in $OUT"
else
    python3 "$REPORT" table "$RUNS_TSV"
fi
# A benchmark that saw errors measured something else: fail the run (kill9's errors
# are what it reports, so it is exempt).
if ! python3 "$REPORT" errors "$RUNS_TSV"; then
    log "error: a scenario other than kill9 saw errors (above); failing the run"
    exit 1
fi
