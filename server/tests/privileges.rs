//! `[server] user` and `group`: started as root, ntsd binds and opens
//! everything, then runs as the configured user with no capabilities, and
//! still serves, rotates and saves keys. Needs root (as CI is).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::{pki_dir, require, unsafe_free_kill, write_config, Ntsd};

/// A field of /proc/PID/task/TID/status for every thread of `pid`.
fn task_fields(pid: u32, field: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            status
                .lines()
                .find(|l| l.starts_with(field))
                .map(|l| {
                    l[field.len()..]
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn runs_as_the_configured_user_without_capabilities() {
    if !require("root (to drop privileges)", common::is_root()) {
        return;
    }
    let dir = pki_dir();
    // The test directory stays 0700 root: the user cannot walk to its key
    // directory by path, and must keep saving through the descriptor ntsd
    // opened before dropping privileges.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let state = dir.path().join("state");
    let tail = format!(
        "[keys]\ndump_dir = \"{}\"\nrotate_interval = \"1s\"\n\n[server]\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
        state.display()
    );
    let cfg = write_config(dir.path(), "ntsd.toml", "auto", &tail);
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    let pid = s.pid();
    assert!(
        !s.log_text().contains("ntsd runs as root"),
        "{}",
        s.log_text()
    );
    let uids = task_fields(pid, "Uid:");
    assert!(uids.len() > 3, "{uids:?}");
    assert!(
        uids.iter().all(|u| u == "65534 65534 65534 65534"),
        "{uids:?}"
    );
    assert!(task_fields(pid, "Gid:")
        .iter()
        .all(|g| g == "65534 65534 65534 65534"));
    for cap in ["CapEff:", "CapPrm:"] {
        let caps = task_fields(pid, cap);
        assert!(
            caps.iter().all(|c| c == "0000000000000000"),
            "{cap} {caps:?}"
        );
    }
    assert!(
        s.log_text().contains("privileges dropped"),
        "{}",
        s.log_text()
    );

    // Still serves.
    let (mut client, _) = common::client_of(&s);
    assert_eq!(
        common::try_cookie(&mut client, s.ntp_port, 1),
        common::Outcome::Authenticated
    );
    // The key directory is the user's, and rotations are saved as that user.
    let meta = std::fs::metadata(&state).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o700));
    let keys = state.join("keys");
    let before = std::fs::read(&keys).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read(&keys).unwrap() == before {
        assert!(
            Instant::now() < deadline,
            "no rotation saved:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::metadata(&keys).unwrap().uid(), 65534);
    unsafe_free_kill(pid, "USR1");
    assert_eq!(
        s.wait_metric("ntsd_keys_rotations_total{kind=\"forced\"}", 1),
        1
    );
    assert_eq!(
        s.metric("ntsd_keys_rotation_failures_total"),
        0,
        "{}",
        s.log_text()
    );
    assert!(state.join("ntsd.pid").exists());
    assert!(s.terminate().success());
    assert!(!state.join("ntsd.pid").exists(), "pid file left behind");
}

#[test]
fn a_user_that_does_not_exist_stops_the_start() {
    let dir = pki_dir();
    let cfg = write_config(
        dir.path(),
        "ntsd.toml",
        "auto",
        "[server]\nuser = \"no-such-user-ntsd\"\n",
    );
    let log = Ntsd::try_spawn(dir.path().to_owned(), &cfg)
        .err()
        .expect("must fail");
    assert!(log.contains("no user \"no-such-user-ntsd\""), "{log}");
}

/// Started as root with no `[server] user`, ntsd keeps root and says so;
/// with a user, it says nothing of the kind.
#[test]
fn root_without_a_user_is_warned() {
    if !require("root", common::is_root()) {
        return;
    }
    let s = Ntsd::start("portable");
    assert!(s.wait_log("ntsd runs as root"), "{}", s.log_text());
    assert!(s.terminate().success());
}

/// The migration guide's certbot advice, as written: the ntsd user in a
/// group that can read certbot's files (`ssl-cert`). The privilege drop
/// keeps the user's supplementary groups, so the renewal is read and
/// served. Runs in a mount namespace whose overlaid /etc holds the user
/// and the group.
#[test]
fn a_supplementary_group_reads_renewed_certificates_after_the_drop() {
    use std::os::unix::fs::PermissionsExt;
    if !require("root (namespaces, chown)", common::is_root()) {
        return;
    }
    let dir = pki_dir();
    let (user_id, cert_group) = (4461u32, 4462u32);
    let group_only = |p: &std::path::Path, m: u32| {
        std::os::unix::fs::chown(p, Some(0), Some(cert_group)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    // As `chgrp -R ssl-cert /etc/letsencrypt/{live,archive}; chmod -R g+rX`.
    group_only(dir.path(), 0o750);
    group_only(&dir.path().join("chain.pem"), 0o640);
    group_only(&dir.path().join("key.pem"), 0o640);
    let tail = "[server]\nuser = \"ntsd-cert-test\"\n";
    let cfg = write_config(dir.path(), "ntsd.toml", "auto", tail);
    let scratch = tempfile::tempdir().unwrap();
    let (up, work) = (scratch.path().join("up"), scratch.path().join("work"));
    std::fs::create_dir(&up).unwrap();
    std::fs::create_dir(&work).unwrap();
    let script = format!(
        "mount -t overlay ntsd-test -o lowerdir=/etc,upperdir={},workdir={} /etc; \
         echo 'ntsd-cert-test:x:{user_id}:{user_id}::/nonexistent:/usr/sbin/nologin' >> /etc/passwd; \
         echo 'ntsd-cert-test:x:{user_id}:' >> /etc/group; \
         echo 'ntsd-ssl-test:x:{cert_group}:ntsd-cert-test' >> /etc/group; \
         exec \"$0\" run --config \"$1\"",
        up.display(),
        work.display()
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-ec"])
        .arg(script)
        .arg(common::BIN)
        .arg(&cfg);
    let s = Ntsd::try_spawn_command(dir.path().to_owned(), cmd)
        .unwrap_or_else(|log| panic!("did not start:\n{log}"));
    assert!(
        s.log_text().contains("privileges dropped") && !s.log_text().contains("not readable"),
        "{}",
        s.log_text()
    );
    let groups = task_fields(s.pid(), "Groups:");
    assert!(
        groups
            .iter()
            .all(|g| g.split_whitespace().any(|x| x == cert_group.to_string())),
        "supplementary group lost: {groups:?}"
    );
    // certbot renews: new files in place, same group and mode.
    let renewed = tempfile::tempdir().unwrap();
    nts_client::write_test_pki(renewed.path()).unwrap();
    for name in ["key.pem", "chain.pem"] {
        let tmp = dir.path().join(format!("{name}.new"));
        std::fs::copy(renewed.path().join(name), &tmp).unwrap();
        group_only(&tmp, 0o640);
        std::fs::rename(&tmp, dir.path().join(name)).unwrap();
    }
    let ok = s.wait_metric("ntsd_ke_certificate_reloads_total{result=\"ok\"}", 1);
    assert!(ok >= 1, "the renewal was not read:\n{}", s.log_text());
    assert!(s.terminate().success());
}
