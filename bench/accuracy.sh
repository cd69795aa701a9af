#!/usr/bin/env bash
# Accuracy on loopback: one short-lived chronyd client (minpoll -4, never
# touching the clock: -x) measures ntsd and a chrony NTS server at the same
# time, both over NTS with the same certificate, and prints the median and
# spread of offset and delay for each from chrony's measurements log.
# Needs root (chronyd) and Debian's chrony.
#
# Usage: bench/accuracy.sh [SECONDS]
#   RUNS=N                     N client runs of SECONDS each against the same
#                              two servers (default 1); with N > 1 the table has
#                              a row per run and per server, then a summary of
#                              the paired offset IQRs (per run, ntsd / chrony)
#   BACKEND=io-uring|portable  ntsd's NTP back end (default io-uring)
#   PLAIN=1                    both clients use plain NTPv4 instead of NTS
#   XLEAVE=1                   both clients ask for interleaved mode (chrony's
#                              xleave, RFC 9769); the table gives the share
#                              of samples each server answered interleaved
#   SERVER_CORE=N              pin both servers to core N (default: unpinned)
#   CLIENT_CORE=N              pin both clients to core N (default: unpinned)
#   NTSD=path/to/ntsd          measure another build of ntsd (before and after)
#   LOAD=R                     offsets under load: during each run, an
#                              ntsd-bench flood sends R requests/s to each
#                              server (NTS, or plain with PLAIN=1; pinned like
#                              the clients); its achieved rate and losses are
#                              printed after the run
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/ntsd-config.sh
source bench/ntsd-config.sh
SECONDS_TO_RUN=${1:-30}
RUNS=${RUNS:-1}
[[ $SECONDS_TO_RUN =~ ^[1-9][0-9]*$ ]] || { echo "accuracy.sh: SECONDS must be a positive integer" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "accuracy.sh: RUNS must be a positive integer" >&2; exit 2; }
LOAD=${LOAD:-}
[ -z "$LOAD" ] || [[ $LOAD =~ ^[1-9][0-9]*$ ]] || { echo "accuracy.sh: LOAD must be a positive integer (requests/s)" >&2; exit 2; }
BACKEND=${BACKEND:-io-uring}
CHRONYD=${CHRONYD:-/usr/sbin/chronyd}
[ -x "$CHRONYD" ] || { echo "chronyd not found (apt-get install chrony)" >&2; exit 1; }
PIN=()
[ -z "${SERVER_CORE:-}" ] || PIN=(taskset -c "$SERVER_CORE")
CLIENT_PIN=()
[ -z "${CLIENT_CORE:-}" ] || CLIENT_PIN=(taskset -c "$CLIENT_CORE")

cargo build --release --locked -q -p ntsd -p ntsd-bench
NTSD=${NTSD:-$PWD/target/release/ntsd}
WORK=$(mktemp -d /tmp/ntsd-accuracy.XXXXXX)
chmod 700 "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PKI=$WORK/pki
"$PWD/target/release/ntsd-bench" pki "$PKI" >/dev/null

# ntsd: one worker, source "local", the chosen back end.
NTSD_NTP=$(free_port); NTSD_KE=$(free_port)
mkdir -m 700 "$WORK/ntsd-server"
ntsd_config "$WORK/ntsd-server/config.toml" "$NTSD_NTP" "$NTSD_KE" "$BACKEND" 1 1 "$PKI" "$WORK/ntsd-server/keys"
"${PIN[@]}" "$NTSD" run --config "$WORK/ntsd-server/config.toml" >"$WORK/ntsd-server/log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    "$NTSD" query "localhost:$NTSD_KE" --ca "$PKI/ca.pem" --timeout 1 >/dev/null 2>&1 && break
    sleep 0.2
done

# chrony as the NTS server, with the same certificate.
C_NTP=$(free_port); C_KE=$(free_port)
mkdir -m 700 "$WORK/server" "$WORK/client" "$WORK/log"
cat >"$WORK/server/chrony.conf" <<CONF
port $C_NTP
ntsport $C_KE
bindaddress 127.0.0.1
local stratum 1
allow 127.0.0.1
ntsserverkey $PKI/key.pem
ntsservercert $PKI/chain.pem
pidfile $WORK/server/pid
cmdport 0
bindcmdaddress /
CONF
"${PIN[@]}" "$CHRONYD" -d -x -u root -f "$WORK/server/chrony.conf" >"$WORK/server/log" 2>&1 &
pids+=($!)
sleep 1

# Two chronyd clients at the same time, one per server (chrony keeps one
# source per address, and both servers are on 127.0.0.1). The name localhost
# lets the certificate verify. Each run starts both afresh (NTS-KE included).
client() { # NAME NTP_PORT KE_PORT
    mkdir -m 700 "$WORK/$1"
    cat >"$WORK/$1/chrony.conf" <<CONF
server localhost port $2 $(nts_opts "$3") $(xleave_opt) minpoll -4 maxpoll -4 iburst
ntstrustedcerts $PKI/ca.pem
logdir $WORK/$1
log measurements
pidfile $WORK/$1/pid
cmdport 0
bindcmdaddress /
CONF
    "${CLIENT_PIN[@]}" "$CHRONYD" -d -x -u root -f "$WORK/$1/chrony.conf" >"$WORK/$1/log" 2>&1 &
    clients+=($!)
    pids+=($!)
}
nts_opts() { [ -n "${PLAIN:-}" ] || echo "nts ntsport $1"; }
xleave_opt() { [ -z "${XLEAVE:-}" ] || echo xleave; }
# A paced flood at LOAD requests/s against one server for the whole run.
load() { # NAME NTP_PORT KE_PORT
    local target=(localhost:"$3" --ca "$PKI/ca.pem")
    [ -z "${PLAIN:-}" ] || target=(127.0.0.1:"$2" --plain)
    "${CLIENT_PIN[@]}" "$PWD/target/release/ntsd-bench" flood "${target[@]}" --rate "$LOAD" \
        --seconds "$SECONDS_TO_RUN" >"$WORK/$1.load" 2>&1 &
    loads+=($!)
    pids+=($!)
}
logs=()
for ((run = 1; run <= RUNS; run++)); do
    clients=() loads=()
    if [ -n "$LOAD" ]; then
        load "ntsd.$run" "$NTSD_NTP" "$NTSD_KE"
        load "chrony.$run" "$C_NTP" "$C_KE"
    fi
    client "ntsd.$run" "$NTSD_NTP" "$NTSD_KE"
    client "chrony.$run" "$C_NTP" "$C_KE"
    sleep "$SECONDS_TO_RUN"
    kill "${clients[@]}"
    wait "${clients[@]}" 2>/dev/null || true
    if [ -n "$LOAD" ]; then
        wait "${loads[@]}" 2>/dev/null || true
        for name in ntsd chrony; do
            line=$(grep '^RESULT ' "$WORK/$name.$run.load" | tail -n 1 || true)
            [ -n "$line" ] || { echo "accuracy.sh: the load on $name failed:" >&2; tail -n 3 "$WORK/$name.$run.load" >&2; exit 1; }
            echo "accuracy.sh: run $run, load on $name: $(echo "$line" | tr ' ' '\n' | grep -E '^(rate|valid|lost|naks|invalid|p99_us)=' | tr '\n' ' ')" >&2
        done
    fi
    logs+=("$WORK/ntsd.$run/measurements.log" "$WORK/chrony.$run/measurements.log")
    [ "$RUNS" = 1 ] || echo "accuracy.sh: run $run of $RUNS done" >&2
done

python3 - "${logs[@]}" <<'PY'
import statistics, sys
def q(v, p):
    v = sorted(v); i = (len(v) - 1) * p; lo = int(i); hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (i - lo)
def load(path):
    # Columns: date time ip L St 123 567 ABCD LP RP Score Offset PeerDel PeerDisp RootDel RootDisp Refid MTxRx
    try:
        rows = [l.split() for l in open(path) if l[:1].isdigit()]
    except OSError:
        rows = []
    # MTxRx: the mode (4B basic, 4I interleaved), then the sources of the
    # transmit and receive timestamps.
    return ([float(r[11]) * 1e6 for r in rows], [float(r[12]) * 1e6 for r in rows],
            [r[17].endswith("I") for r in rows if len(r) > 17])
def sign_test(k, m):
    """Two-sided sign test: chance of a split at least this uneven among k + m
    untied pairs if neither server were more likely to be lower."""
    from math import comb
    n = k + m
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(k, m) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
paths = sys.argv[1:]
runs = len(paths) // 2
names = ["ntsd", "chronyd 4.3 (NTS server)"]
many = runs > 1
print(("| run " if many else "") + "| server | samples | interleaved | offset median (µs) | offset IQR (µs) | offset p5..p95 (µs) | delay median (µs) | delay IQR (µs) |")
print(("|---" if many else "") + "|---|---|---|---|---|---|---|---|")
iqr = {n: [] for n in names}
for run in range(runs):
    for name, path in zip(names, paths[2 * run:2 * run + 2]):
        off, dl, xl = load(path)
        lead = f"| {run + 1} " if many else ""
        share = f"{100 * sum(xl) / len(xl):.0f} %" if xl else "-"
        if len(off) < 2:
            print(lead + f"| {name} | {len(off)} | {share} | no measurements | | | | |")
            iqr[name].append(None)
            continue
        spread = q(off, .75) - q(off, .25)
        iqr[name].append(spread)
        print(lead + f"| {name} | {len(off)} | {share} | {statistics.median(off):+.2f} | {spread:.2f} | {q(off,.05):+.2f} .. {q(off,.95):+.2f} | {statistics.median(dl):.2f} | {q(dl,.75)-q(dl,.25):.2f} |")
if many:
    pairs = [(a, b) for a, b in zip(*iqr.values()) if a is not None and b is not None and b > 0]
    if pairs:
        ratios = sorted(a / b for a, b in pairs)
        lower = sum(a < b for a, b in pairs)
        equal = sum(a == b for a, b in pairs)
        print()
        print(f"Offset IQR over {len(pairs)} paired runs: median ntsd {statistics.median(a for a, _ in pairs):.2f} µs, "
              f"chrony {statistics.median(b for _, b in pairs):.2f} µs; per-run ratio ntsd/chrony median "
              f"{statistics.median(ratios):.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f}); "
              f"ntsd lower in {lower}, equal in {equal}, higher in {len(pairs) - lower - equal}; "
              f"two-sided sign test p = {sign_test(lower, len(pairs) - lower - equal):.2f}.")
PY
