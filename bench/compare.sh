#!/usr/bin/env bash
# Side by side on loopback: ntsd (io_uring and portable back ends), chronyd,
# ntpd-rs and a UDP echo server (the ceiling of the generator and the kernel),
# one after another, each pinned to the server cores while ntsd-bench runs
# pinned to the generator cores. Every server gets the same certificate (one
# throwaway ECDSA P-256 PKI for localhost), NTS on, no rate limiting, and
# serves as a local stratum 1 that never touches the system clock.
#
# The run is made of rounds (--reps); in each, every server in turn is
# started, gets an NTS flood (AEAD 15), an NTS flood with AEAD 30 where the
# server negotiates it (ntsd; not chrony 4.3 on Nettle 3.8), a plain NTPv4
# flood and an NTS-KE handshake flood (echo: plain only), and is stopped.
# Prints one Markdown table of the medians (min-max over the rounds), a table
# of ntsd's paired ratios to its peers against the targets (each round's
# ratio, so that the host's drift between rounds cancels), ntsd's NTS
# overhead over plain, and writes a chart of the CPU per reply (SVG, gnuplot)
# to --chart; every RESULT line is kept in a log.
#
# Usage: bench/compare.sh [--server-cores LIST] [--gen-cores LIST] [--workers N]
#          [--reps N] [--seconds S] [--gen-threads N] [--servers LIST]
#          [--sessions N] [--window W] [--ke-concurrency C] [--chart FILE]
#          [--xleave] [--spin] [--quick] [--no-build]
# Needs root for chronyd (leave chrony out of --servers otherwise). KEEP=1
# keeps the work directory (configs, logs, RESULT lines).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/ntsd-config.sh
source bench/ntsd-config.sh
ROOT=$PWD
CMDLINE=bench/compare.sh
for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9,._/:=+-]+$ ]]; then CMDLINE+=" $a"; else CMDLINE+=" $(printf %q "$a")"; fi
done

usage() {
    cat <<'EOF'
Usage: bench/compare.sh [options]
  --server-cores LIST   CPUs for the server (taskset list, e.g. 0-7)   [0]
  --gen-cores LIST      CPUs for the generator ntsd-bench               [1]
  --workers N           NTP worker threads / SO_REUSEPORT instances     [number of server cores]
  --gen-threads N       generator threads                               [number of generator cores]
  --reps N              rounds (repetitions per server and test)        [3]
  --seconds S           seconds per test                                [10]
  --servers LIST        subset of ntsd-uring,ntsd-portable,ntsd-scraped,chrony,ntpd-rs,echo
                        [all but ntsd-scraped]; ntsd-scraped is ntsd-uring with its
                        /metrics scraped every second (ntsd stats, on the generator CPUs)
  --sessions N          NTS-KE sessions of an NTS flood                 [generator default]
  --window W            requests in flight                              [generator default]
  --ke-concurrency C    concurrent handshakes of keflood                [generator default]
  --chart FILE          SVG chart of CPU per reply (gnuplot)            [bench/results/compare.svg]
  --xleave              NTS and plain floods in interleaved form (RFC 9769): a
                        server with interleaved mode answers every request
                        interleaved, with the kernel's transmit timestamp
  --spin                the generator polls without sleeping, so its wake-ups
                        are not charged to the server (steadier CPU per reply)
  --quick               1 repetition of 2 s (smoke test)
  --no-build            use the binaries in target/release as they are
Environment: KEEP=1 keeps the work directory; NTSD, CHRONYD, NTP_DAEMON,
NTSD_BENCH override the binaries (NTSD=another build's ntsd, with --no-build, for
paired before/after rounds).
EOF
}

SERVER_CORES=0 GEN_CORES=1 WORKERS='' GEN_THREADS='' REPS='' SECS='' SESSIONS='' WINDOW='' KE_CONC=''
SERVERS=ntsd-uring,ntsd-portable,chrony,ntpd-rs,echo
QUICK='' BUILD=1 CHART=bench/results/compare.svg XLEAVE='' SPIN=
need_arg() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then echo "compare.sh: $1 needs a value" >&2; exit 2; fi; }
while [ "$#" -gt 0 ]; do
    case "$1" in
        --server-cores) need_arg "$@"; SERVER_CORES=$2; shift 2 ;;
        --gen-cores) need_arg "$@"; GEN_CORES=$2; shift 2 ;;
        --workers) need_arg "$@"; WORKERS=$2; shift 2 ;;
        --gen-threads) need_arg "$@"; GEN_THREADS=$2; shift 2 ;;
        --reps) need_arg "$@"; REPS=$2; shift 2 ;;
        --seconds) need_arg "$@"; SECS=$2; shift 2 ;;
        --servers) need_arg "$@"; SERVERS=$2; shift 2 ;;
        --sessions) need_arg "$@"; SESSIONS=$2; shift 2 ;;
        --window) need_arg "$@"; WINDOW=$2; shift 2 ;;
        --ke-concurrency) need_arg "$@"; KE_CONC=$2; shift 2 ;;
        --chart) need_arg "$@"; CHART=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --xleave) XLEAVE=1; shift ;;
        --spin) SPIN=1; shift ;;
        --no-build) BUILD=; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "compare.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

# "0-3,8,10-11" -> 7; refuses anything else.
count_cpus() {
    local n=0 part
    [[ $1 =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || die "bad CPU list '$1' (expected e.g. 0-3,8)"
    IFS=, read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            [ "${part#*-}" -ge "${part%-*}" ] || die "bad CPU range '$part'"
            n=$((n + ${part#*-} - ${part%-*} + 1))
        else
            n=$((n + 1))
        fi
    done
    echo "$n"
}
is_count() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, not '$2'"; }

N_SERVER_CORES=$(count_cpus "$SERVER_CORES")
N_GEN_CORES=$(count_cpus "$GEN_CORES")
WORKERS=${WORKERS:-$N_SERVER_CORES}
GEN_THREADS=${GEN_THREADS:-$N_GEN_CORES}
if [ -n "$QUICK" ]; then REPS=${REPS:-1}; SECS=${SECS:-2}; fi
REPS=${REPS:-3}
SECS=${SECS:-10}
is_count --workers "$WORKERS"; is_count --gen-threads "$GEN_THREADS"
is_count --reps "$REPS"; is_count --seconds "$SECS"
[ -z "$SESSIONS" ] || is_count --sessions "$SESSIONS"
[ -z "$WINDOW" ] || is_count --window "$WINDOW"
[ -z "$KE_CONC" ] || is_count --ke-concurrency "$KE_CONC"
taskset -c "$SERVER_CORES" true 2>/dev/null || die "--server-cores $SERVER_CORES: not CPUs of this machine"
taskset -c "$GEN_CORES" true 2>/dev/null || die "--gen-cores $GEN_CORES: not CPUs of this machine"
IFS=, read -ra SERVER_LIST <<<"$SERVERS"
for s in "${SERVER_LIST[@]}"; do
    case "$s" in ntsd-uring|ntsd-portable|ntsd-scraped|chrony|ntpd-rs|echo) ;; *) die "--servers: unknown server '$s'" ;; esac
done
wants() { [[ ",$SERVERS," == *",$1,"* ]]; }
command -v python3 >/dev/null || die "python3 is needed (free ports, the table)"
if ! command -v gnuplot >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing gnuplot-nox (apt-get) for the chart"
    DEBIAN_FRONTEND=noninteractive apt-get install -y gnuplot-nox >&2 || true
fi
command -v gnuplot >/dev/null || log "gnuplot not found: no chart (apt-get install gnuplot-nox)"

# --- binaries -----------------------------------------------------------------
if wants chrony; then
    [ "$(id -u)" = 0 ] || die "chronyd needs root: run as root or leave chrony out of --servers"
    CHRONYD=${CHRONYD:-$(command -v chronyd || echo /usr/sbin/chronyd)}
    if [ ! -x "$CHRONYD" ]; then
        log "installing chrony (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y chrony >&2
        CHRONYD=/usr/sbin/chronyd
    fi
    [ -x "$CHRONYD" ] || die "chronyd not found (apt-get install chrony)"
fi
if wants ntpd-rs; then
    NTP_DAEMON=${NTP_DAEMON:-$(command -v ntp-daemon || echo "${CARGO_HOME:-$HOME/.cargo}/bin/ntp-daemon")}
    if [ ! -x "$NTP_DAEMON" ]; then
        log "installing ntpd-rs (cargo install ntpd --locked)"
        cargo install ntpd --locked >&2
        NTP_DAEMON="${CARGO_HOME:-$HOME/.cargo}/bin/ntp-daemon"
    fi
    [ -x "$NTP_DAEMON" ] || die "ntp-daemon not found (cargo install ntpd --locked)"
fi
if [ -n "$BUILD" ]; then
    log "building ntsd and ntsd-bench (release)"
    cargo build --release --locked -q -p ntsd -p ntsd-bench
fi
NTSD=${NTSD:-$ROOT/target/release/ntsd}
BENCH=${NTSD_BENCH:-$ROOT/target/release/ntsd-bench}
{ [ -x "$NTSD" ] && [ -x "$BENCH" ]; } || die "target/release/ntsd or ntsd-bench missing (drop --no-build)"

# --- work directory, processes, cleanup ---------------------------------------
WORK=$(mktemp -d /tmp/ntsd-compare.XXXXXX)
chmod 700 "$WORK"
RESULTS=$WORK/results.log
: >"$RESULTS"
started=()
# The scraper of ntsd-scraped: not in `started`, so its CPU is not the server's.
SCRAPER='' SCRAPES=''
descendants() { local c; for c in $(pgrep -P "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done; }
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $s != Z* ]]; }
# TERM to a process and everything under it; KILL after 5 s.
kill_tree() {
    local all i q left
    read -ra all <<<"$1 $(descendants "$1" | tr '\n' ' ')"
    kill -TERM "${all[@]}" 2>/dev/null || true
    for i in $(seq 50); do
        left=0
        for q in "${all[@]}"; do if alive "$q"; then left=1; fi; done
        [ "$left" = 0 ] && break
        [ "$i" = 50 ] && { kill -KILL "${all[@]}" 2>/dev/null || true; }
        sleep 0.1
    done
    wait "$1" 2>/dev/null || true
}
stop_scraper() { if [ -n "$SCRAPER" ]; then kill_tree "$SCRAPER"; SCRAPER=''; fi; }
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${started[@]}"; do kill_tree "$p"; done
    stop_scraper
    if [ -n "${KEEP:-}" ]; then
        echo "Work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port free for both TCP and UDP on 127.0.0.1.
free_port() {
    python3 - <<'PY'
import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        u.close(); t.close()
PY
}

# --- the PKI ------------------------------------------------------------------
PKI=$WORK/pki
"$BENCH" pki "$PKI" >/dev/null || die "ntsd-bench pki failed"
CA=$PKI/ca.pem CHAIN=$PKI/chain.pem KEY=$PKI/key.pem
for f in "$CA" "$CHAIN" "$KEY"; do [ -s "$f" ] || die "ntsd-bench pki did not write $f"; done

# --- servers ------------------------------------------------------------------
# Each start_* appends its pids to `started` (the generator measures each
# with its descendants), and sets SRV_LOG, KE_PORT, NTP_PORT and SRV_NOTE
# (what the worker count means for it).
SRV_LOG='' KE_PORT='' NTP_PORT='' SRV_NOTE='' ROUND=''
all_alive() { local p; for p in "${started[@]}"; do alive "$p" || return 1; done; }
declare -A NOTES=()

start_ntsd() { # BACKEND [scraped]
    local dir=$ROUND/ntsd-$1${2:+-$2} mport
    mkdir -m 700 "$dir"
    NTP_PORT=$(free_port) KE_PORT=$(free_port)
    ntsd_config "$dir/config.toml" "$NTP_PORT" "$KE_PORT" "$1" "$WORKERS" "$N_SERVER_CORES" "$PKI" "$dir/keys" announce
    if [ -n "${2:-}" ]; then
        mport=$(free_port)
        printf '\n[metrics]\nlisten = "127.0.0.1:%s"\n' "$mport" >>"$dir/config.toml"
    fi
    SRV_LOG=$dir/log
    taskset -c "$SERVER_CORES" "$NTSD" run --config "$dir/config.toml" >"$SRV_LOG" 2>&1 &
    started+=("$!")
    SRV_NOTE="$WORKERS NTP workers ($1), $N_SERVER_CORES NTS-KE threads"
    if [ -n "${2:-}" ]; then
        # As Prometheus would: one scrape a second, for as long as it runs.
        SCRAPES=$dir/scrapes
        taskset -c "$GEN_CORES" bash -c "while :; do '$NTSD' stats --metrics http://127.0.0.1:$mport/metrics >/dev/null 2>&1 && echo ok >>'$SCRAPES'; sleep 1; done" &
        SCRAPER=$!
        SRV_NOTE+=", /metrics scraped every second"
    fi
}

# chronyd has no NTP threads. Like ntsd's workers, N instances share the
# ports with SO_REUSEPORT (chronyd 4.x sets it) and one cookie key: the first
# writes ntsdumpdir/ntskeys at start, the others load it and never rotate
# (ntsrotate 0). The NTS-KE helpers (ntsprocesses) add up to the server cores.
start_chrony() {
    local dir=$ROUND/chrony i per
    mkdir -m 700 "$dir" "$dir/nts"
    NTP_PORT=$(free_port) KE_PORT=$(free_port)
    per=$(( (N_SERVER_CORES + WORKERS - 1) / WORKERS ))
    for ((i = 0; i < WORKERS; i++)); do
        cat >"$dir/chrony$i.conf" <<CONF
port $NTP_PORT
ntsport $KE_PORT
bindaddress 127.0.0.1
local stratum 1
allow 127.0.0.0/8
ntsserverkey $KEY
ntsservercert $CHAIN
ntsntpserver 127.0.0.1
ntsprocesses $per
ntsdumpdir $dir/nts
$( [ "$i" = 0 ] || echo "ntsrotate 0" )
pidfile $dir/chronyd$i.pid
cmdport 0
bindcmdaddress /
CONF
    done
    SRV_LOG=$dir/log
    for ((i = 0; i < WORKERS; i++)); do
        taskset -c "$SERVER_CORES" "$CHRONYD" -d -x -u root -f "$dir/chrony$i.conf" >>"$SRV_LOG" 2>&1 &
        started+=("$!")
        if [ "$i" = 0 ]; then # the others load the key it writes at start
            for _ in $(seq 100); do [ -s "$dir/nts/ntskeys" ] && break; sleep 0.05; done
            [ -s "$dir/nts/ntskeys" ] || fail_start chrony "no $dir/nts/ntskeys after 5 s"
        fi
    done
    SRV_NOTE="$WORKERS chronyd instance(s) on one port (SO_REUSEPORT), ntsprocesses $per each"
}

# ntpd-rs serves NTP from one task on one socket per [[server]] and does not
# set SO_REUSEPORT, so --workers does not apply; its tokio runtime (NTS-KE)
# gets one thread per server core. No [[source]]: it never touches the clock.
start_ntpd_rs() {
    local dir=$ROUND/ntpd-rs
    mkdir -m 700 "$dir"
    NTP_PORT=$(free_port) KE_PORT=$(free_port)
    cat >"$dir/ntp.toml" <<CONF
[observability]
log-level = "warn"

[[server]]
listen = "127.0.0.1:$NTP_PORT"

[[nts-ke-server]]
listen = "127.0.0.1:$KE_PORT"
certificate-chain-path = "$CHAIN"
private-key-path = "$KEY"
ntp-server = "127.0.0.1"
ntp-port = $NTP_PORT
key-exchange-timeout-ms = 5000
concurrent-connections = 1024

[synchronization]
local-stratum = 1
CONF
    SRV_LOG=$dir/log
    TOKIO_WORKER_THREADS=$N_SERVER_CORES taskset -c "$SERVER_CORES" "$NTP_DAEMON" -c "$dir/ntp.toml" >"$SRV_LOG" 2>&1 &
    started+=("$!")
    SRV_NOTE="1 NTP socket/task (no SO_REUSEPORT), $N_SERVER_CORES tokio threads"
}

start_echo() {
    mkdir -m 700 "$ROUND/echo"
    NTP_PORT=$(free_port) KE_PORT=
    SRV_LOG=$ROUND/echo/log
    local threads=()
    if "$BENCH" echo --help 2>/dev/null | grep -q -- --threads; then threads=(--threads "$WORKERS"); fi
    taskset -c "$SERVER_CORES" "$BENCH" echo --listen "127.0.0.1:$NTP_PORT" "${threads[@]}" >"$SRV_LOG" 2>&1 &
    started+=("$!")
    SRV_NOTE="UDP echo (${threads[1]:-1} thread(s)), the ceiling of generator and kernel"
}

fail_start() { # NAME WHY
    echo "compare.sh: server $1 failed to start: $2" >&2
    echo "--- last lines of $SRV_LOG$([ -n "${KEEP:-}" ] || echo ' (KEEP=1 keeps it)'):" >&2
    tail -n 20 "$SRV_LOG" >&2 || true
    exit 1
}

# Up when an NTS query (NTS-KE + one authenticated NTP exchange) succeeds;
# echo: when it says it listens. At most 20 s.
wait_up() { # NAME
    local i
    for i in $(seq 100); do
        all_alive || fail_start "$1" "it exited"
        if [ "$1" = echo ]; then
            grep -q "echo listening on" "$SRV_LOG" 2>/dev/null && return 0
        elif "$NTSD" query "localhost:$KE_PORT" --ca "$CA" --timeout 1 >"$WORK/$1.query" 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    [ "$1" = echo ] || { echo "--- last query:" >&2; cat "$WORK/$1.query" >&2 || true; }
    fail_start "$1" "not answering after 20 s"
}

# --- the runs -----------------------------------------------------------------
# One generator run; appends "RESULT server=... test=... rep=... <generator's
# key=value pairs>" to the results log, or "... failed=1" with a warning.
run_test() { # SERVER TEST REP
    local out=$WORK/$1.$2.$3.out rc=0 args line p
    case "$2" in
        nts) args=(flood "localhost:$KE_PORT" --ca "$CA" --aead 15 --threads "$GEN_THREADS") ;;
        nts30) args=(flood "localhost:$KE_PORT" --ca "$CA" --aead 30 --threads "$GEN_THREADS") ;;
        plain) args=(flood "127.0.0.1:$NTP_PORT" --plain --threads "$GEN_THREADS") ;;
        ke) args=(keflood "localhost:$KE_PORT" --ca "$CA") ;;
    esac
    if [ "$2" != ke ]; then
        # ntsd steers each client address to one worker: with several
        # workers, the load must come from several addresses to reach them
        # all (every server gets the same sources).
        [ "$WORKERS" -le 1 ] || args+=(--source-addresses 64)
        [ -z "$SESSIONS" ] || [ "$2" = plain ] || args+=(--sessions "$SESSIONS")
        [ -z "$WINDOW" ] || args+=(--window "$WINDOW")
        [ -z "$XLEAVE" ] || args+=(--xleave)
        [ -z "$SPIN" ] || args+=(--spin)
    else
        [ -z "$KE_CONC" ] || args+=(--concurrency "$KE_CONC")
    fi
    args+=(--seconds "$SECS")
    for p in "${started[@]}"; do args+=(--server-pid "$p"); done
    echo "taskset -c $GEN_CORES ntsd-bench ${args[*]}" >"$out"
    timeout --foreground -k 5 $((SECS + 120)) taskset -c "$GEN_CORES" "$BENCH" "${args[@]}" >>"$out" 2>&1 || rc=$?
    line=$(grep '^RESULT ' "$out" | tail -n 1 || true)
    if [ "$rc" = 0 ] && [ -n "$line" ]; then
        echo "RESULT server=$1 test=$2 rep=$3 ${line#RESULT }" >>"$RESULTS"
        log "$1 $2 #$3: ${line#RESULT }"
    else
        echo "RESULT server=$1 test=$2 rep=$3 status=failed rc=$rc" >>"$RESULTS"
        echo "compare.sh: WARNING: $1 $2 #$3 failed (exit $rc); last lines:" >&2
        tail -n 5 "$out" | sed 's/^/    /' >&2
    fi
}

# Rounds: each round starts every server afresh, runs its tests and stops it
# before the next; round r begins with the r-th server, so no server is
# always first or last. A drift of the host's speed over the run then hits
# all servers alike, and each round gives one paired ratio per figure.
N_SERVERS=${#SERVER_LIST[@]}
for ((rep = 1; rep <= REPS; rep++)); do
    ROUND=$WORK/round$rep
    mkdir -m 700 "$ROUND"
    for ((k = 0; k < N_SERVERS; k++)); do
        s=${SERVER_LIST[$(((k + rep - 1) % N_SERVERS))]}
        log "round $rep/$REPS: starting $s on CPUs $SERVER_CORES"
        case "$s" in
            ntsd-uring) start_ntsd io-uring ;;
            ntsd-portable) start_ntsd portable ;;
            ntsd-scraped) start_ntsd io-uring scraped ;;
            chrony) start_chrony ;;
            ntpd-rs) start_ntpd_rs ;;
            echo) start_echo ;;
        esac
        wait_up "$s"
        NOTES[$s]=$SRV_NOTE
        if [ "$s" = echo ]; then
            tests=(plain)
            log "$s up: pid(s) ${started[*]}, UDP 127.0.0.1:$NTP_PORT"
        else
            tests=(nts plain ke)
            log "$s up: pid(s) ${started[*]}, NTS-KE localhost:$KE_PORT, NTP 127.0.0.1:$NTP_PORT; $(grep '^server:' "$WORK/$s.query" || true)"
            "$BENCH" ke "localhost:$KE_PORT" --ca "$CA" >"$WORK/$s.ke" 2>&1 || fail_start "$s" "ntsd-bench ke failed: $(tail -n 1 "$WORK/$s.ke")"
            log "$s ke: $(tail -n 1 "$WORK/$s.ke")"
            # AEAD 30 only where the server chooses it when offered first.
            if "$BENCH" ke "localhost:$KE_PORT" --ca "$CA" --aead 30 --aead 15 2>/dev/null | grep -q '^aead 30 '; then
                tests=(nts nts30 plain ke)
            else
                log "$s does not negotiate AEAD 30: no nts30 test"
            fi
        fi
        for t in "${tests[@]}"; do
            run_test "$s" "$t" "$rep"
            all_alive || fail_start "$s" "it died during the $t test"
        done
        if [ -n "$SCRAPER" ]; then
            stop_scraper
            n=$(wc -l <"$SCRAPES" 2>/dev/null || echo 0)
            log "$s: scraped $n times"
            [ "$n" -gt 0 ] || fail_start "$s" "no scrape of /metrics succeeded"
        fi
        for p in "${started[@]}"; do kill_tree "$p"; done
        started=()
    done
done

# --- the table ----------------------------------------------------------------
NOTES_TEXT=$(for s in "${SERVER_LIST[@]}"; do echo "$s: ${NOTES[$s]}"; done)
{
    echo
    echo "## NTS servers side by side on loopback"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- kernel: $(uname -r)"
    echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc --all) CPUs"
    echo "- server CPUs: $SERVER_CORES ($N_SERVER_CORES), workers $WORKERS; generator CPUs: $GEN_CORES ($N_GEN_CORES), threads $GEN_THREADS"
    echo "- $REPS repetition(s) of ${SECS} s per test; sessions ${SESSIONS:-default}, window ${WINDOW:-default}, NTS-KE concurrency ${KE_CONC:-default}"
    echo "- ntsd $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (modified)')$(wants chrony && echo ", $("$CHRONYD" -v | head -n 1 | sed 's/ *(+.*//')")$(wants ntpd-rs && echo ", ntpd-rs $("$NTP_DAEMON" -v 2>&1 | head -n 1 | awk '{print $NF}')")"
    echo "- command: $CMDLINE"
    echo
    python3 - "$RESULTS" "$NOTES_TEXT" "${SERVER_LIST[@]}" <<'PY'
import statistics, sys
path, notes, servers = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = {}
for line in open(path):
    kv = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
    runs.setdefault((kv.get("server"), kv.get("test")), []).append(kv)

def ok(s, t):
    return [r for r in runs.get((s, t), []) if r.get("status") != "failed"]

def vals(s, t, key):
    out = []
    for r in ok(s, t):
        try:
            out.append(float(r[key]))
        except (KeyError, ValueError):
            pass
    return out

def cell(s, t, key, fmt):
    if (s, t) not in runs:
        return "—"
    v = vals(s, t, key)
    if not v:
        return "failed" if not ok(s, t) else "?"
    m = fmt(statistics.median(v))
    if len(v) > 1:
        m += f" ({fmt(min(v))}–{fmt(max(v))})"
    if len(v) < len(runs[(s, t)]):
        m += f" [{len(runs[(s, t)]) - len(v)} failed]"
    return m

rate = lambda x: f"{x:,.0f}"
us = lambda x: f"{x:.2f}"
one = lambda x: f"{x:,.0f}"
print("| server | NTS replies/s | NTS (AEAD 30) replies/s | plain replies/s | NTS-KE handshakes/s "
      "| server CPU µs per NTS reply | per NTS reply, AEAD 30 | per plain reply "
      "| NTS-KE handshakes per server CPU-s | p99 latency NTS (µs) | peak RSS (MiB) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for s in servers:
    rss = [v for t in ("nts", "nts30", "plain", "ke") for v in vals(s, t, "server_rss_peak_kb")]
    print("| " + " | ".join([
        s,
        cell(s, "nts", "rate", rate),
        cell(s, "nts30", "rate", rate),
        cell(s, "plain", "rate", rate),
        cell(s, "ke", "rate", rate),
        cell(s, "nts", "server_cpu_us_per_reply", us),
        cell(s, "nts30", "server_cpu_us_per_reply", us),
        cell(s, "plain", "server_cpu_us_per_reply", us),
        cell(s, "ke", "server_handshakes_per_cpu_s", one),
        cell(s, "nts", "p99_us", one),
        f"{max(rss) / 1024:.1f}" if rss else "—",
    ]) + " |")
print()

# Paired ratios: each round's ntsd figure over the same round's peer figure,
# so that a drift of the host between rounds cancels out.
def per_round(s, t, key):
    out = {}
    for r in ok(s, t):
        try:
            out[r["rep"]] = float(r[key])
        except (KeyError, ValueError):
            pass
    return out

TARGETS = [
    # (figure, test, key, peer, peer's test, target, lower is better)
    ("server CPU per NTS reply vs chrony", "nts", "server_cpu_us_per_reply", "chrony", "nts", 0.60, True),
    ("server CPU per NTS reply vs ntpd-rs", "nts", "server_cpu_us_per_reply", "ntpd-rs", "nts", 0.35, True),
    # chrony 4.3 (Debian 12, Nettle 3.8) has no AEAD 30: its AEAD-15 figure is the peer.
    ("server CPU per AEAD-30 reply vs chrony's NTS reply", "nts30", "server_cpu_us_per_reply", "chrony", "nts", 0.55, True),
    ("server CPU per plain reply vs echo", "plain", "server_cpu_us_per_reply", "echo", "plain", 1.10, True),
    ("NTS-KE handshakes per CPU-s vs chrony", "ke", "server_handshakes_per_cpu_s", "chrony", "ke", 2.0, False),
    ("NTS-KE handshakes per CPU-s vs ntpd-rs", "ke", "server_handshakes_per_cpu_s", "ntpd-rs", "ke", 1.3, False),
    # The back end that `auto` does not choose must not be the faster one.
    ("server CPU per NTS reply vs ntsd-portable", "nts", "server_cpu_us_per_reply", "ntsd-portable", "nts", 1.00, True),
    ("server CPU per plain reply vs ntsd-portable", "plain", "server_cpu_us_per_reply", "ntsd-portable", "plain", 1.00, True),
    # The cost of being scraped: within the noise (2 %) of the same build unscraped.
    ("server CPU per NTS reply vs ntsd-uring", "nts", "server_cpu_us_per_reply", "ntsd-uring", "nts", 1.02, True),
    ("server CPU per plain reply vs ntsd-uring", "plain", "server_cpu_us_per_reply", "ntsd-uring", "plain", 1.02, True),
]
ntsds = [s for s in servers if s.startswith("ntsd")]
rows = []
for name, t, key, peer, peer_t, target, lower in TARGETS:
    if peer not in servers:
        continue
    cells = []
    for s in ntsds:
        if s == peer:
            cells.append("—")
            continue
        a, b = per_round(s, t, key), per_round(peer, peer_t, key)
        ratios = [a[k] / b[k] for k in sorted(a) if k in b and b[k] > 0]
        if not ratios:
            cells.append("—")
            continue
        m = statistics.median(ratios)
        met = m <= target if lower else m >= target
        cell = f"{m:.3f}x"
        if len(ratios) > 1:
            cell += f" ({min(ratios):.2f}–{max(ratios):.2f})"
        cells.append(cell + (" met" if met else " **not met**"))
    rows.append(f"| {name} | {'≤' if lower else '≥'} {target:.2f}x | " + " | ".join(cells) + " |")
if rows and ntsds:
    print("Paired ratios: the median over the rounds of each round's ratio (min–max), against the target.")
    print()
    print("| ratio | target | " + " | ".join(ntsds) + " |")
    print("|---|---|" + "---|" * len(ntsds))
    print("\n".join(rows))
    print()
# The NTS overhead: µs per NTS reply minus µs per plain reply of the same
# server in the same round, at saturation.
over = []
for s in ntsds:
    plain = per_round(s, "plain", "server_cpu_us_per_reply")
    cells = []
    for t in ("nts", "nts30"):
        a = per_round(s, t, "server_cpu_us_per_reply")
        d = [a[k] - plain[k] for k in sorted(a) if k in plain]
        if not d:
            cells.append("—")
            continue
        m = statistics.median(d)
        c = f"{m:.2f} µs"
        if len(d) > 1:
            c += f" ({min(d):.2f}–{max(d):.2f})"
        cells.append(c + (" met" if m <= 0.8 else " **not met**"))
    over.append(f"| {s} | " + " | ".join(cells) + " |")
if over:
    print("NTS overhead over plain (server CPU µs per NTS reply − per plain reply, same server and round; target ≤ 0.80 µs):")
    print()
    print("| server | AEAD 15 | AEAD 30 |")
    print("|---|---|---|")
    print("\n".join(over))
    print()
for n in notes.splitlines():
    print(f"- {n}")
# Anything a reader must know before trusting a cell.
for (s, t), rs in runs.items():
    for r in rs:
        if r.get("status") == "failed":
            print(f"- {s} {t} #{r.get('rep')}: failed (exit {r.get('rc')})")
            continue
        bad = {k: r[k] for k in ("lost", "late", "naks", "invalid", "errors", "failed") if r.get(k, "0") not in ("0", "")}
        if bad:
            print(f"- {s} {t} #{r.get('rep')}: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
PY
}
# --- the chart ----------------------------------------------------------------
# Median server CPU µs per reply of every server and mode, as grouped bars.
if command -v gnuplot >/dev/null; then
    python3 - "$RESULTS" "${SERVER_LIST[@]}" >"$WORK/chart.dat" <<'PY'
import statistics, sys
path, servers = sys.argv[1], sys.argv[2:]
v = {}
for line in open(path):
    kv = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
    if kv.get("status") == "failed" or "server_cpu_us_per_reply" not in kv:
        continue
    v.setdefault((kv["server"], kv["test"]), []).append(float(kv["server_cpu_us_per_reply"]))
# one line per server: name, then the three medians (NaN: not run)
for s in servers:
    cells = [f"{statistics.median(v[(s, t)]):.3f}" if (s, t) in v else "NaN" for t in ("nts", "nts30", "plain")]
    print(s, *cells)
PY
    mkdir -p "$(dirname "$CHART")"
    gnuplot <<GP || log "gnuplot failed: no chart"
set terminal svg size 900,480 dynamic font "sans,12" background "white"
set output "$CHART"
set title "Server CPU per reply, loopback, server on CPUs $SERVER_CORES ($(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%d))"
set ylabel "server CPU µs per reply (median of $REPS rounds)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top left
set grid ytics
set yrange [0:*]
set datafile missing "NaN"
plot "$WORK/chart.dat" using 2:xtic(1) title "NTS, AEAD 15", '' using 3 title "NTS, AEAD 30", '' using 4 title "plain NTPv4"
GP
    [ -s "$CHART" ] && log "chart: $CHART"
fi

echo >&2
if [ -n "${KEEP:-}" ]; then
    echo "Raw RESULT lines: $RESULTS" >&2
else
    echo "Raw RESULT lines: $RESULTS (removed at exit; KEEP=1 keeps it)" >&2
fi
