#!/usr/bin/env bash
# Accuracy on loopback: one short-lived chronyd client (minpoll -4, never
# touching the clock: -x) measures ntsd and a chrony NTS server at the same
# time, both over NTS with the same certificate, and prints the median and
# spread of offset and delay for each from chrony's measurements log.
# Needs root (chronyd) and Debian's chrony. Usage: bench/accuracy.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-30}
CHRONYD=${CHRONYD:-/usr/sbin/chronyd}
[ -x "$CHRONYD" ] || { echo "chronyd not found (apt-get install chrony)" >&2; exit 1; }

cargo build --release --locked -q -p ntsd
NTSD=$PWD/target/release/ntsd
WORK=$(mktemp -d /tmp/ntsd-accuracy.XXXXXX)
chmod 700 "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ntsd: the demo (loopback, throwaway CA, local source, 1 worker).
"$NTSD" demo >"$WORK/demo.out" 2>"$WORK/demo.err" &
pids+=($!)
for _ in $(seq 50); do grep -q "Stop with" "$WORK/demo.out" 2>/dev/null && break; sleep 0.1; done
PKI=$(grep -o '/tmp/ntsd-demo-[A-Za-z0-9]*' "$WORK/demo.out" | head -1)
NTSD_KE=$(grep -o 'localhost:[0-9]*' "$WORK/demo.out" | head -1 | cut -d: -f2)
NTSD_NTP=$(grep -o 'port [0-9]*' "$WORK/demo.out" | head -1 | cut -d' ' -f2)

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
"$CHRONYD" -d -x -u root -f "$WORK/server/chrony.conf" >"$WORK/server/log" 2>&1 &
pids+=($!)
sleep 1

# Two chronyd clients at the same time, one per server (chrony keeps one
# source per address, and both servers are on 127.0.0.1). The name localhost
# lets the certificate verify.
client() { # NAME NTP_PORT KE_PORT
    mkdir -m 700 "$WORK/$1"
    cat >"$WORK/$1/chrony.conf" <<CONF
server localhost port $2 nts ntsport $3 minpoll -4 maxpoll -4 iburst
ntstrustedcerts $PKI/ca.pem
logdir $WORK/$1
log measurements
pidfile $WORK/$1/pid
cmdport 0
bindcmdaddress /
CONF
    "$CHRONYD" -d -x -u root -f "$WORK/$1/chrony.conf" >"$WORK/$1/log" 2>&1 &
    clients+=($!)
    pids+=($!)
}
clients=()
client ntsd "$NTSD_NTP" "$NTSD_KE"
client chrony "$C_NTP" "$C_KE"
sleep "$SECONDS_TO_RUN"
kill "${clients[@]}"; sleep 0.5

python3 - "$WORK/ntsd/measurements.log" "$WORK/chrony/measurements.log" <<'PY'
import statistics, sys
def q(v, p):
    v = sorted(v); i = (len(v) - 1) * p; lo = int(i); hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (i - lo)
print("| server | samples | offset median (µs) | offset IQR (µs) | offset p5..p95 (µs) | delay median (µs) | delay IQR (µs) |")
print("|---|---|---|---|---|---|---|")
for name, path in zip(["ntsd", "chronyd 4.3 (NTS server)"], sys.argv[1:]):
    # Columns: date time ip L St 123 567 ABCD LP RP Score Offset PeerDel PeerDisp RootDel RootDisp Refid MTxRx
    rows = [l.split() for l in open(path) if l[:1].isdigit()]
    off = [float(r[11]) * 1e6 for r in rows]; dl = [float(r[12]) * 1e6 for r in rows]
    print(f"| {name} | {len(rows)} | {statistics.median(off):+.1f} | {q(off,.75)-q(off,.25):.1f} | {q(off,.05):+.1f} .. {q(off,.95):+.1f} | {statistics.median(dl):.1f} | {q(dl,.75)-q(dl,.25):.1f} |")
PY
