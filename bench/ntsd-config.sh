# Sourced by the bench scripts: the ntsd configuration they all run, a
# loopback server with a local clock, written in one place so that it
# follows the config format.
#
# ntsd_config FILE NTP_PORT KE_PORT BACKEND WORKERS KE_THREADS PKI_DIR DUMP_DIR [ANNOUNCE]
#   PKI_DIR holds chain.pem and key.pem as `ntsd-bench pki` writes them.
#   ANNOUNCE=1 makes NTS-KE name the NTP server (127.0.0.1:NTP_PORT)
#   explicitly; without it ntsd announces its default.
ntsd_config() {
    local file=$1 ntp=$2 ke=$3 backend=$4 workers=$5 ke_threads=$6 pki=$7 dump=$8 announce=${9:-}
    {
        cat <<CONF
[ntp]
listen = ["127.0.0.1:$ntp"]
workers = $workers
backend = "$backend"

[nts_ke]
listen = ["127.0.0.1:$ke"]
certificate_chain = "$pki/chain.pem"
private_key = "$pki/key.pem"
CONF
        if [ -n "$announce" ]; then
            printf 'ntp_server = "127.0.0.1"\nntp_port = %s\n' "$ntp"
        fi
        cat <<CONF
threads = $ke_threads

[keys]
dump_dir = "$dump"

[time]
source = "local"
CONF
    } >"$file"
}
