//! What a minimal config (certificate and key only) does, against the real
//! binary: dual-stack listeners on the standard ports and keys on disk in
//! /var/lib/ntsd. It runs in network and mount namespaces of its own (root,
//! as in CI), so ports 123 and 4460 are free whatever the host runs, and
//! /var/lib inside is a temporary directory: nothing on the host is touched.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ipv6_loopback, is_root, pki_dir, require, Ntsd, BIN};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Whether `/proc/PID/net/FILE` lists a socket bound to the wildcard
/// address on `port` (TCP: listening).
fn listening(pid: u32, file: &str, port: u16) -> bool {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap();
    let zeros = if file.ends_with('6') { 32 } else { 8 };
    let local = format!("{}:{port:04X}", "0".repeat(zeros));
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&local.as_str()) && (file.starts_with("udp") || f.get(3) == Some(&"0A"))
    })
}

/// `ntsd query TARGET` run inside the server's network namespace.
fn query_inside(pid: u32, target: &str, ca: &Path) -> (bool, String) {
    common::output(
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .arg("--")
            .arg(BIN)
            .args(["query", target, "--timeout", "5", "--ca"])
            .arg(ca),
    )
}

#[test]
fn a_minimal_config_serves_both_stacks_on_the_standard_ports_with_keys_on_disk() {
    if !require("root (network and mount namespaces)", is_root())
        || !require("IPv6 on loopback", ipv6_loopback())
    {
        return;
    }
    let host_default = Path::new("/var/lib/ntsd");
    let host_had_it = host_default.exists();
    let pki = pki_dir();
    let var_lib = pki.path().join("var-lib");
    std::fs::create_dir(&var_lib).unwrap();
    std::fs::set_permissions(&var_lib, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = pki.path().join("minimal.toml");
    std::fs::write(
        &cfg,
        format!(
            "[nts_ke]\ncertificate_chain = \"{}\"\nprivate_key = \"{}\"\n",
            pki.path().join("chain.pem").display(),
            pki.path().join("key.pem").display()
        ),
    )
    .unwrap();
    // unshare execs the shell, which execs ntsd: one process throughout,
    // killed by the harness on drop.
    let mut cmd = common::in_namespaces(
        r#"ip link set lo up; mount --bind "$1" /var/lib; exec "$2" run --config "$3""#,
    );
    cmd.arg("sh").arg(&var_lib).arg(BIN).arg(&cfg);
    let s = Ntsd::try_spawn_command(pki.path().to_owned(), cmd)
        .unwrap_or_else(|log| panic!("ntsd did not start in its namespace:\n{log}"));
    let pid = s.pid();
    assert_eq!((s.ntp_port, s.ke_port), (123, 4460), "{}", s.log_text());
    for (file, port) in [("udp", 123), ("udp6", 123), ("tcp", 4460), ("tcp6", 4460)] {
        assert!(
            listening(pid, file, port),
            "nothing on {file} port {port}:\n{}",
            std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap()
        );
    }
    // Real NTS over each stack: NTS-KE on 4460, then NTP on 123 (no Port
    // record, since the port is the standard one).
    for target in ["127.0.0.1", "[::1]"] {
        let (ok, out) = query_inside(pid, target, &s.ca());
        assert!(
            ok && out.contains("stratum"),
            "query {target}:\n{out}\n{}",
            s.log_text()
        );
    }
    let state = var_lib.join("ntsd");
    let keys = state.join("keys");
    assert!(
        keys.exists(),
        "no key file in /var/lib/ntsd:\n{}",
        s.log_text()
    );
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&keys), 0o600);
    assert!(state.join("ntsd.pid").exists());
    assert!(keyrotate::KeyStore::read(&state).unwrap().is_some());
    assert!(s.terminate().success());
    assert!(!state.join("ntsd.pid").exists());
    assert_eq!(
        host_default.exists(),
        host_had_it,
        "the host's /var/lib/ntsd changed"
    );
}

/// A `dump_dir` typo such as `/tmp` or a directory of another user stops
/// the start with an error naming it, and the directory is left as it was.
#[test]
fn a_dump_dir_others_can_write_or_another_user_owns_is_refused_and_left_unchanged() {
    let pki = pki_dir();
    let shared = pki.path().join("shared-tmp");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut cases = vec![(shared.clone(), 0o1777, "can write it")];
    if require("root (chown)", is_root()) {
        let foreign = pki.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        cases.push((foreign, 0o700, "owned by uid 65534"));
    }
    for (dir, before, why) in cases {
        let tail = format!("[keys]\ndump_dir = \"{}\"\n", dir.display());
        let cfg = common::write_config(pki.path(), "refused.toml", "auto", &tail);
        let start = Instant::now();
        let log = Ntsd::try_spawn(pki.path().to_owned(), &cfg)
            .err()
            .expect("the start must fail");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(
            log.contains(&dir.display().to_string()) && log.contains(why),
            "{log}"
        );
        assert_eq!(mode(&dir), before, "mode changed");
        let meta = std::fs::metadata(&dir).unwrap();
        assert!(meta.uid() == 65534 || before == 0o1777);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "wrote into it");
    }
}
