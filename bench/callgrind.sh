#!/usr/bin/env bash
# Instructions per reply, counted by valgrind's callgrind: repeatable where
# CPU time is not. Runs ntsd (portable back end: under valgrind, which runs
# one thread at a time, the io_uring back end never became ready) under
# callgrind with one NTP worker, sends it a paced NTS flood
# and then a plain one from ntsd-bench, and divides the NTP worker thread's
# instruction count by the replies it sent. Kernel time is not counted:
# these are the user-space instructions of the data path (parse, cookie,
# AEAD, reply) and of the receive/send loop around it.
#
# Usage: bench/callgrind.sh [REQUESTS_PER_SECOND] [SECONDS]   (default 500 10)
# Needs valgrind (Debian: apt-get install valgrind). KEEP=1 keeps the work
# directory with the callgrind.out files for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/ntsd-config.sh
source bench/ntsd-config.sh
RATE=${1:-500}
SECS=${2:-10}
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }

cargo build --release --locked -q -p ntsd -p ntsd-bench
NTSD=${NTSD:-$PWD/target/release/ntsd}
BENCH=$PWD/target/release/ntsd-bench
WORK=$(mktemp -d /tmp/ntsd-callgrind.XXXXXX)
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$BENCH" pki "$WORK/pki" >/dev/null

# One server per test so that each count covers one kind of reply.
measure() { # TEST (nts|plain)
    local ntp ke dir=$WORK/$1 target args out file ir replies
    ntp=$(free_port); ke=$(free_port)
    mkdir -p "$dir"
    ntsd_config "$dir/config.toml" "$ntp" "$ke" portable 1 1 "$WORK/pki" "$dir/keys"
    valgrind --tool=callgrind --separate-threads=yes \
        --callgrind-out-file="$dir/callgrind.out.%p" \
        "$NTSD" run --config "$dir/config.toml" >"$dir/log" 2>&1 &
    pid=$!
    local ready=
    for _ in $(seq 300); do
        "$NTSD" query "localhost:$ke" --ca "$WORK/pki/ca.pem" --timeout 2 >/dev/null 2>&1 && { ready=1; break; }
        kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
        sleep 0.5
    done
    [ -n "$ready" ] || { echo "ntsd under valgrind did not answer NTS-KE within 150 s" >&2; exit 1; }
    if [ "$1" = nts ]; then
        args=(flood "localhost:$ke" --ca "$WORK/pki/ca.pem" --sessions 64)
    else
        args=(flood "127.0.0.1:$ntp" --plain)
    fi
    out=$("$BENCH" "${args[@]}" --rate "$RATE" --seconds "$SECS" --window 16 | grep '^RESULT' || true)
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    replies=$(grep -o ' valid=[0-9]*' <<<"$out" | cut -d= -f2 || true)
    [ "${replies:-0}" -gt 0 ] || { echo "$1 flood got no valid replies: ${out:-no RESULT line}" >&2; exit 1; }
    # The worker thread is the one whose profile holds Worker::process.
    file=$(grep -l 'ntsd::ntp::worker::Worker::process' "$dir"/callgrind.out.* | head -1 || true)
    [ -n "$file" ] || { echo "no callgrind profile of the NTP worker in $dir" >&2; exit 1; }
    ir=$(grep -m1 '^summary:' "$file" | awk '{print $2}')
    # Worker::process and below (parse, cookie, AEAD, reply, counters,
    # clock reads), inclusive; the rest is the receive/send loop.
    handle=$(callgrind_annotate --inclusive=yes "$file" 2>/dev/null \
        | awk '/ntsd::ntp::worker::Worker::process/ {gsub(",","",$1); print $1; exit}')
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$replies" \
        "$(( ir / replies ))" "${handle:+$(( handle / replies ))}" "$(basename "$file")"
    callgrind_annotate "$file" 2>/dev/null | sed -n "/^Ir/,\$p" | head -14 >"$dir/top.txt" || true
}

echo "| test | replies | instructions per reply (worker thread) | of which Worker::process | profile |"
echo "|---|---|---|---|---|"
measure nts
measure plain
echo
for t in nts plain; do echo "Top functions, $t (self):"; cat "$WORK/$t/top.txt"; echo; done
