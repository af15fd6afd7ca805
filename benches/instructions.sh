#!/usr/bin/env bash
# Userspace instructions per request (or WebSocket message) in one worker,
# counted by callgrind: a measure of a change's CPU cost that the machine's noise
# does not move (wall-clock A/B runs here vary by 10-20% between identical rounds).
#
#   bash benches/instructions.sh http [APP] [CONNECTIONS]   # wrk, default apps:hello_asgi
#   bash benches/instructions.sh ws [APP] [CONNECTIONS]     # wsload, default apps:ws_echo_asgi
#   WORKER_ARGS="-k gthread --threads 8" bash benches/instructions.sh http apps:hello
#
# The worker runs under callgrind twice, loaded for SHORT and then LONG seconds; the
# difference between the two runs' totals over the difference in requests served is
# the cost of one request, with the worker's start-up and shutdown cancelled out.
# Kernel time (the sockets) is not counted: compare it with `perf stat` if a change
# alters syscalls. Needs valgrind, wrk, and wsload for ws (see docs/benchmarks.md).
set -euo pipefail

kind=${1:?usage: instructions.sh http|ws [APP] [CONNECTIONS]}
case $kind in
http) app=${2:-apps:hello_asgi} ;;
ws) app=${2:-apps:ws_echo_asgi} ;;
*) echo "instructions.sh: the first argument is http or ws, not '$kind'" >&2; exit 2 ;;
esac
conns=${3:-64}
short=${SHORT:-3}
long=${LONG:-10}
port=${PORT:-8431}
read -r -a worker_args <<<"${WORKER_ARGS:--k asgi --asgi-loop uvloop}"
here=$(cd "$(dirname "$0")" && pwd)
# The interpreter itself, not a wrapper script (pyenv's shim): valgrind must start it.
python=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
wsload=$here/wsload/target/release/wsload
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One run: prints "<requests> <instructions>" for a load of $1 seconds.
run() {
    local secs=$1 master worker served total
    (cd "$here" && PYTHONPATH=$here exec valgrind --tool=callgrind \
        --callgrind-out-file="$work/cg.%p" "$python" -m ferrocorn -w 1 \
        -b "127.0.0.1:$port" "${worker_args[@]}" --timeout 300 \
        -p "$work/pid" "$app" >"$work/server.log" 2>&1) &
    local launcher=$!
    for _ in $(seq 600); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
    master=$(cat "$work/pid")
    worker=$(pgrep -P "$master" | head -1)
    if [ "$kind" = http ]; then
        wrk -t1 -c"$conns" -d"${secs}s" "http://127.0.0.1:$port/" >"$work/load.txt"
        served=$(awk '/requests in/ {print $1}' "$work/load.txt")
    else
        "$wsload" --url "ws://127.0.0.1:$port/" -c "$conns" -d "$secs" -s 64 -w 1 -t 1 \
            >"$work/load.json"
        served=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['messages'])" \
            "$work/load.json")
    fi
    kill -TERM "$master"
    wait "$launcher" || true
    total=$(callgrind_annotate "$work/cg.$worker" 2>/dev/null |
        awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}')
    rm -f "$work"/cg.*
    echo "$served $total"
}

read -r n1 i1 < <(run "$short")
read -r n2 i2 < <(run "$long")
"$python" - "$n1" "$i1" "$n2" "$i2" "$kind" <<'EOF'
import sys
n1, i1, n2, i2 = (int(x) for x in sys.argv[1:5])
unit = "request" if sys.argv[5] == "http" else "message"
per = (i2 - i1) / (n2 - n1)
print(f"{per:,.0f} instructions per {unit} "
      f"(runs: {n1} {unit}s / {i1:,} and {n2} / {i2:,}; start-up {i1 - n1 * per:,.0f})")
EOF
