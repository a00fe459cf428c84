#!/usr/bin/env bash
# Instructions per request of drover's proxy path, counted by valgrind's callgrind.
#
# Instruction counts do not depend on how busy the machine is, so unlike req/s they can
# be compared between builds on a shared machine. The script starts 2 upstream-workers
# and drover (the load harness's template plus optional extra YAML) under callgrind with
# instrumentation off, counts an idle baseline over the same seconds, warms up with wrk,
# switches instrumentation on for one wrk run, dumps, and prints Ir / request (also net
# of the idle baseline) plus the top functions (inclusive and self).
#
#   benches/load/callgrind.sh                               plain GET /
#   benches/load/callgrind.sh --extra benches/load/templates/sessions-memory.yaml --cookies 256
#   benches/load/callgrind.sh --out /tmp/cg --seconds 10 --connections 64
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SCRIPT_DIR/../.." && pwd)
REPORT=$SCRIPT_DIR/report.py
DROVER_BIN=${DROVER_BIN:-$REPO/target/release/drover}
WORKER_BIN=${WORKER_BIN:-$REPO/target/release/upstream-worker}
EXTRA=
COOKIES=0
SECONDS_RUN=8
CONNS=64
OUT=
PORT_BASE=18780
PATH_Q=/
BODY=0
CLOSE=0

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options: --extra FILE (YAML merged into the config), --cookies N (send N session cookies
issued by this drover in turn), --seconds S (measured run, default 8), --connections N
(default 64), --path P (default /), --body N (POST an N-byte body instead of GET),
--close (send \`Connection: close\`: a new connection per request, what \`ab\` costs),
--out DIR (keep callgrind.out + annotations),
--port-base P (default 18780; uses P, P+9, P+20, P+21).
EOF
}
die() { echo "callgrind.sh: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
    case $1 in
    --extra) EXTRA=$2; shift 2 ;;
    --cookies) COOKIES=$2; shift 2 ;;
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --path) PATH_Q=$2; shift 2 ;;
    --body) BODY=$2; shift 2 ;;
    --close) CLOSE=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
for c in valgrind callgrind_control callgrind_annotate wrk python3 curl; do
    command -v "$c" >/dev/null || die "$c not found (apt-get install valgrind wrk python3 curl)"
done
[[ -x $DROVER_BIN && -x $WORKER_BIN ]] || die "build first: cargo build --release --workspace"
[[ -z $EXTRA || -f $EXTRA ]] || die "--extra: no such file: $EXTRA"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/drover-callgrind.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n $OUT ]]; then mkdir -p "$OUT" && cp -r "$WORK"/. "$OUT"/; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

P=$PORT_BASE
W0=$((P + 20)) W1=$((P + 21))
for port in $P $((P + 9)) $W0 $W1; do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "port $port is in use (--port-base)"
done
for i in 0 1; do
    port=$((W0 + i))
    env PORT=$port WORKER_ID=$i BIND=127.0.0.1 DROVER_PARENT_PID=$$ "$WORKER_BIN" >"$WORK/worker-$i.log" 2>&1 &
    PIDS+=($!)
done

sed -e "s|@LISTEN@|127.0.0.1:$P|" -e "s|@ADMIN_LISTEN@|127.0.0.1:$((P + 9))|" \
    -e "s|@RUNTIME_DIR@|$WORK/run|" -e "s|@STRATEGY@|least_connections|" \
    -e "s|@UPSTREAMS@|  - address: 127.0.0.1:$W0\n  - address: 127.0.0.1:$W1|" \
    "$SCRIPT_DIR/templates/drover.yaml.tmpl" >"$WORK/drover.yaml"
mkdir -p -m 700 "$WORK/run"  # drover refuses a runtime_dir others can enter
if [[ -n $EXTRA ]]; then
    python3 "$REPORT" merge "$WORK/drover.yaml" "$EXTRA" >"$WORK/merged.yaml"
    mv "$WORK/merged.yaml" "$WORK/drover.yaml"
fi
"$DROVER_BIN" -t -c "$WORK/drover.yaml" >/dev/null || die "drover rejected $WORK/drover.yaml"

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
    "$DROVER_BIN" -c "$WORK/drover.yaml" >"$WORK/drover.log" 2>&1 &
VG=$!
PIDS=("$VG" "${PIDS[@]}")
for ((i = 0; i < 600; i++)); do
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$P$PATH_Q" 2>/dev/null && break
    kill -0 "$VG" 2>/dev/null || { tail "$WORK/drover.log" >&2; die "drover exited"; }
    sleep 0.2
done

SCRIPT=()
if ((COOKIES > 0)); then
    python3 "$REPORT" cookies "http://127.0.0.1:$P/" "$COOKIES" >"$WORK/cookies.txt" ||
        die "drover set no session cookie (is sessions.enabled true in --extra?)"
    python3 "$REPORT" lua "$WORK/cookies.txt" >"$WORK/cookies.lua"
    SCRIPT=(-s "$WORK/cookies.lua")
fi
if ((BODY > 0)); then
    python3 "$REPORT" post-lua "$BODY" >"$WORK/post.lua"
    SCRIPT=(-s "$WORK/post.lua")
fi
if ((CLOSE)); then
    SCRIPT+=(-H "Connection: close")
fi
URL="http://127.0.0.1:$P$PATH_Q"
# What drover does per second with no request at all (samplers, tickers, health
# checks): subtracted, so a slower run (fewer requests in the same seconds) does not
# look costlier per request.
echo "idle baseline (${SECONDS_RUN} s, instrumentation on, no load)" >&2
callgrind_control -i on "$VG" >/dev/null
sleep "$SECONDS_RUN"
callgrind_control -d "$VG" >/dev/null
callgrind_control -i off "$VG" >/dev/null
sleep 1
IDLE_DUMP=$(ls "$WORK"/callgrind.out.* | sort -V | tail -n1)
IR_IDLE=$(grep -E '^(summary|totals):' "$IDLE_DUMP" | head -n1 | awk '{print $2}')
echo "warm-up (3 s, instrumentation off)" >&2
wrk -t1 -c"$CONNS" -d3s "${SCRIPT[@]}" "$URL" >"$WORK/wrk-warmup.txt" 2>&1 || true
callgrind_control -i on "$VG" >/dev/null
echo "measuring (${SECONDS_RUN} s, instrumentation on)" >&2
wrk -t1 -c"$CONNS" -d"${SECONDS_RUN}s" "${SCRIPT[@]}" "$URL" >"$WORK/wrk.txt" 2>&1 || true
callgrind_control -d "$VG" >/dev/null
callgrind_control -i off "$VG" >/dev/null
sleep 1
DUMP=$(ls "$WORK"/callgrind.out.* | sort -V | tail -n1)
REQS=$(grep -oE '^ *[0-9]+ requests in' "$WORK/wrk.txt" | grep -oE '[0-9]+' | head -n1)
[[ -n $REQS && $REQS -gt 0 ]] || { cat "$WORK/wrk.txt" >&2; die "wrk made no requests"; }
IR=$(grep -E '^(summary|totals):' "$DUMP" | head -n1 | awk '{print $2}')
callgrind_annotate --inclusive=yes "$DUMP" 2>/dev/null | head -n 80 >"$WORK/inclusive.txt" || true
callgrind_annotate "$DUMP" 2>/dev/null | head -n 60 >"$WORK/self.txt" || true
echo "requests: $REQS; instructions: $IR; instructions/request: $((IR / REQS)); idle baseline $IR_IDLE; net instructions/request: $(((IR - IR_IDLE) / REQS))"
echo
echo "top functions by self cost:"
sed -n '/^Ir/,$p' "$WORK/self.txt" | head -n 40
