//! chrony, the reference client, must synchronise to ntsd over NTS.
//! Runs as root (chronyd -u root); skipped only outside CI when chronyd or
//! root is missing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{is_root, require, Ntsd};

const CHRONYD: &str = "/usr/sbin/chronyd";

/// Whether the chrony tests can run: chronyd installed and running as root
/// (both required in CI, see `require`).
fn chrony_usable() -> bool {
    require("chronyd", std::path::Path::new(CHRONYD).exists()) && require("root", is_root())
}

/// Runs `chronyd -Q` once against the server; returns its combined output.
fn chronyd_query(s: &Ntsd) -> (bool, String) {
    let server = format!(
        "server localhost port {} nts ntsport {} iburst maxsamples 1",
        s.ntp_port, s.ke_port
    );
    let certs = format!("ntstrustedcerts {}", s.ca().display());
    let start = Instant::now();
    let result = common::output(
        Command::new(CHRONYD)
            .args(["-Q", "-f", "/dev/null", "-u", "root", "-t", "5"])
            .arg(&server)
            .arg(&certs),
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    result
}

#[test]
fn chrony_obtains_an_authenticated_sample() {
    if !chrony_usable() {
        return;
    }
    for backend in common::backends() {
        let s = Ntsd::start(backend);
        let (ok, out) = chronyd_query(&s);
        // With `nts`, chrony discards unauthenticated replies, so a sample at
        // all means NTS-KE and NTS authentication both succeeded.
        assert!(
            ok && out.contains("System clock wrong by"),
            "{backend}: chronyd did not get a sample:\n{out}\nserver log:\n{}",
            s.log_text()
        );
        assert!(s.wait_metric("ntsd_ke_sessions_total{aead=\"15\"}", 1) >= 1);
        assert!(s.wait_metric("ntsd_ntp_responses_total{kind=\"nts\"}", 1) >= 1);
        assert_eq!(s.metric("ntsd_ntp_naks_total{reason=\"auth_failed\"}"), 0);
        assert!(s.terminate().success());
    }
}

/// A port free on loopback for both UDP and TCP right now (chronyd cannot
/// report an ephemeral port back, so one is chosen for it).
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A chronyd process, killed on drop.
struct Chronyd(std::process::Child);

impl Drop for Chronyd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ntsd_query_succeeds_against_a_chrony_nts_server() {
    if !chrony_usable() {
        return;
    }
    let dir = common::pki_dir();
    let d = dir.path();
    let (ntp, ke) = (free_port(), free_port());
    let conf = format!(
        "port {ntp}\nntsport {ke}\nbindaddress 127.0.0.1\nlocal stratum 1\nallow 127.0.0.1\n\
         ntsserverkey {key}\nntsservercert {chain}\npidfile {pid}\ncmdport 0\nbindcmdaddress /\n",
        key = d.join("key.pem").display(),
        chain = d.join("chain.pem").display(),
        pid = d.join("chronyd.pid").display(),
    );
    std::fs::write(d.join("chrony.conf"), conf).unwrap();
    // -x: never touch the clock; -d: foreground, logs to stderr.
    let _server = Chronyd(
        Command::new(CHRONYD)
            .args(["-d", "-x", "-u", "root", "-f"])
            .arg(d.join("chrony.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chronyd"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", ke)).is_err() {
        assert!(Instant::now() < deadline, "chronyd NTS-KE did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(common::BIN)
        .args(["query", &format!("localhost:{ke}"), "--ca"])
        .arg(d.join("ca.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "query failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("8 cookies of") && text.contains("authenticated"),
        "{text}"
    );
    assert!(
        text.contains(&format!("NTP server localhost:{ntp}")),
        "{text}"
    );
}

/// chronyd keeps using its cookies across a restart of ntsd with a dump
/// directory: the restarted process answers its NTS requests without a new
/// NTS-KE and without a NAK.
#[test]
fn chrony_keeps_synchronising_across_a_server_restart() {
    if !chrony_usable() {
        return;
    }
    let dir = common::pki_dir();
    let d = dir.path();
    let (ntp, ke) = (free_port(), free_port());
    let cfg = d.join("ntsd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[ntp]\nlisten = [\"127.0.0.1:{ntp}\"]\nworkers = 1\n[nts_ke]\nlisten = [\"127.0.0.1:{ke}\"]\n\
             certificate_chain = \"{chain}\"\nprivate_key = \"{key}\"\n[keys]\ndump_dir = \"{state}\"\n\
             [time]\nsource = \"local\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            chain = d.join("chain.pem").display(),
            key = d.join("key.pem").display(),
            state = d.join("state").display(),
        ),
    )
    .unwrap();
    let server = Ntsd::spawn(d.to_owned(), &cfg);
    // chronyd insists on a private directory for its command socket.
    let run_dir = d.join("chronyd");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let sock = run_dir.join("chronyd.sock");
    let conf = format!(
        "server 127.0.0.1 port {ntp} nts ntsport {ke} minpoll 0 maxpoll 0 iburst\n\
         ntstrustedcerts {ca}\ncmdport 0\nbindcmdaddress {sock}\npidfile {pid}\n",
        ca = d.join("ca.pem").display(),
        sock = sock.display(),
        pid = d.join("client.pid").display(),
    );
    // chrony verifies the certificate against the name it connects to.
    let conf = conf.replace("server 127.0.0.1", "server localhost");
    std::fs::write(d.join("client.conf"), conf).unwrap();
    let _client = Chronyd(
        Command::new(CHRONYD)
            .args(["-d", "-x", "-u", "root", "-f"])
            .arg(d.join("client.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(d.join("client.log")).unwrap())
            .spawn()
            .expect("start chronyd"),
    );
    // chronyc binds its own socket in /run/chrony, which the package's service
    // normally creates; without a running service it may be missing.
    if !std::path::Path::new("/run/chrony").exists() {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new().mode(0o750).create("/run/chrony");
    }
    let authdata = || {
        let out = Command::new("chronyc")
            .args(["-h"])
            .arg(&sock)
            .args(["-n", "authdata"])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        out
    };
    assert!(
        server.wait_metric("ntsd_ntp_responses_total{kind=\"nts\"}", 3) >= 3,
        "{}",
        server.log_text()
    );
    let before = authdata();
    let client_log = || std::fs::read_to_string(d.join("client.log")).unwrap_or_default();
    assert!(
        before.contains("NTS"),
        "chronyc authdata: {before}\nchronyd:\n{}",
        client_log()
    );
    assert!(server.terminate().success());

    let server = Ntsd::spawn(d.to_owned(), &cfg);
    let replies = server.wait_metric("ntsd_ntp_responses_total{kind=\"nts\"}", 3);
    let after = authdata();
    eprintln!("chronyc authdata before the restart:\n{before}\nafter:\n{after}");
    assert!(
        replies >= 3,
        "chrony stopped getting NTS replies after the restart\n{after}"
    );
    // Columns: name, mode, key id, AEAD, key bits, Last, Atmp, NAK, Cook, CLen.
    let row: Vec<&str> = after
        .lines()
        .find(|l| l.contains(" NTS "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.len(), 10, "{after}");
    assert_eq!(
        (row[6], row[7]),
        ("0", "0"),
        "KE attempts or NAKs after the restart:\n{after}"
    );
    assert_ne!(row[8], "0", "no cookies left:\n{after}");
    assert_eq!(
        server.metric_sum("ntsd_ke_sessions_total"),
        0,
        "chrony ran NTS-KE again\n{after}"
    );
    assert_eq!(server.metric("ntsd_ke_connections_total"), 0);
    for reason in ["cookie_unknown_key", "cookie_invalid", "auth_failed"] {
        assert_eq!(
            server.metric(&format!("ntsd_ntp_naks_total{{reason=\"{reason}\"}}")),
            0,
            "{reason}"
        );
    }
}
