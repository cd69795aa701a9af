//! Master keys across restarts, crashes and fleet nodes, against the real
//! binary.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{client_of, pki_dir, try_cookie, write_config, Ntsd, Outcome, BIN};
use nts_proto::client::NtsClient;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn keys_cli(action: &str, cfg: &Path) -> (bool, String) {
    common::output(
        Command::new(BIN)
            .args(["keys", action, "--config"])
            .arg(cfg),
    )
}

/// A server persisting its keys in `dir/state`; returns the state dir and config.
fn persisted(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let state = dir.join("state");
    let tail = format!("[keys]\ndump_dir = \"{}\"\n", state.display());
    (state, write_config(dir, "ntsd.toml", "auto", &tail))
}

#[test]
fn cookies_survive_a_restart_and_files_stay_private() {
    let dir = pki_dir();
    let (state, cfg) = persisted(dir.path());
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    let (mut client, _) = client_of(&s);
    assert_eq!(
        try_cookie(&mut client, s.ntp_port, 1),
        Outcome::Authenticated
    );
    assert!(state.join("ntsd.pid").exists());
    assert!(s.terminate().success());
    assert!(!state.join("ntsd.pid").exists(), "pid file left behind");

    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    // KE cookies from before the restart, on the new process.
    for seed in 2..6 {
        assert_eq!(
            try_cookie(&mut client, s.ntp_port, seed),
            Outcome::Authenticated
        );
    }
    assert_eq!(
        s.metric("ntsd_ntp_naks_total{reason=\"cookie_unknown_key\"}"),
        0
    );
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("keys")), 0o600);
    let (ok, list) = keys_cli("list", &cfg);
    assert!(
        ok && list.contains("seals and opens") && list.contains("next: opens"),
        "{list}"
    );
}

#[test]
fn forced_rotation_through_the_cli() {
    let dir = pki_dir();
    let (state, cfg) = persisted(dir.path());
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    let (mut before, _) = client_of(&s);
    let file_before = std::fs::read(state.join("keys")).unwrap();
    let (ok, out) = keys_cli("rotate", &cfg);
    assert!(ok && out.contains("rotated"), "{out}\n{}", s.log_text());
    assert_ne!(std::fs::read(state.join("keys")).unwrap(), file_before);
    assert_eq!(
        s.wait_metric("ntsd_keys_rotations_total{kind=\"forced\"}", 1),
        1
    );
    // Old cookies still open; new ones come from the new key.
    assert_eq!(
        try_cookie(&mut before, s.ntp_port, 1),
        Outcome::Authenticated
    );
    let (mut after, _) = client_of(&s);
    assert_eq!(
        try_cookie(&mut after, s.ntp_port, 2),
        Outcome::Authenticated
    );
    let (_, list) = keys_cli("list", &cfg);
    assert!(
        list.lines()
            .any(|l| l.contains("seals") && l.contains(" 2 ")),
        "{list}"
    );
}

#[test]
fn a_damaged_key_file_is_moved_aside_and_replaced() {
    let dir = pki_dir();
    let (state, cfg) = persisted(dir.path());
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(state.join("keys"), b"not a key file").unwrap();
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    let aside: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("keys.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"not a key file");
    assert!(
        s.log_text().contains("KEY FILE DAMAGED"),
        "{}",
        s.log_text()
    );
    let (mut c, _) = client_of(&s);
    assert_eq!(try_cookie(&mut c, s.ntp_port, 1), Outcome::Authenticated);
}

#[test]
fn startup_errors_name_the_problem() {
    let dir = pki_dir();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let bad_dump = blocker.join("state");
    let cfg = write_config(
        dir.path(),
        "a.toml",
        "auto",
        &format!("[keys]\ndump_dir = \"{}\"\n", bad_dump.display()),
    );
    let log = Ntsd::try_spawn(dir.path().to_owned(), &cfg)
        .err()
        .expect("must fail");
    assert!(log.contains("a-file/state"), "{log}");

    let secret = dir.path().join("short-secret");
    std::fs::write(&secret, [1u8; 16]).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = write_config(
        dir.path(),
        "b.toml",
        "auto",
        &format!("[keys]\nfleet_secret_file = \"{}\"\n", secret.display()),
    );
    let log = Ntsd::try_spawn(dir.path().to_owned(), &cfg)
        .err()
        .expect("must fail");
    assert!(
        log.contains("short-secret") && log.contains("16 bytes"),
        "{log}"
    );

    std::fs::write(&secret, [1u8; 32]).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = Ntsd::try_spawn(dir.path().to_owned(), &cfg)
        .err()
        .expect("must fail");
    assert!(log.contains("0644"), "{log}");
    let (ok, out) = keys_cli("rotate", &cfg);
    assert!(!ok && out.contains("fleet"), "{out}");
}

/// Waits until the node's current key id reaches `id`.
fn wait_epoch(s: &Ntsd, id: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.metric("ntsd_keys_current_id") < u64::from(id) {
        assert!(Instant::now() < deadline, "no rotation to {id}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fleet_nodes_open_each_others_cookies_within_keep() {
    let dir = pki_dir();
    let secret = dir.path().join("fleet.secret");
    std::fs::write(&secret, (0u8..48).collect::<Vec<_>>()).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
    let tail = format!(
        "[keys]\nfleet_secret_file = \"{}\"\nrotate_interval = \"2s\"\nkeep = 1\n",
        secret.display()
    );
    let a = Ntsd::spawn(
        dir.path().to_owned(),
        &write_config(dir.path(), "a.toml", "auto", &tail),
    );
    let b = Ntsd::spawn(
        dir.path().to_owned(),
        &write_config(dir.path(), "b.toml", "portable", &tail),
    );
    let (mut client, epoch) = client_of(&a);
    // Node A's cookie on node B.
    assert_eq!(
        try_cookie(&mut client, b.ntp_port, 1),
        Outcome::Authenticated
    );
    // After B rotates once: still accepted.
    wait_epoch(&b, epoch + 1);
    assert_eq!(
        try_cookie(&mut client, b.ntp_port, 2),
        Outcome::Authenticated
    );
    // More than `keep` intervals after sealing: NTS NAK on both nodes.
    wait_epoch(&b, epoch + 2);
    assert_eq!(try_cookie(&mut client, b.ntp_port, 3), Outcome::Nak);
    wait_epoch(&a, epoch + 2);
    assert_eq!(try_cookie(&mut client, a.ntp_port, 4), Outcome::Nak);
    assert!(b.metric("ntsd_ntp_naks_total{reason=\"cookie_unknown_key\"}") >= 1);
    // Nothing secret was written next to the configs.
    assert!(!dir.path().join("keys").exists());
}

/// kill -9 while keys rotate every second: the key file always loads, and
/// cookies issued before each kill are accepted after the restart.
#[test]
fn crashes_during_fast_rotation_lose_no_keys() {
    let dir = pki_dir();
    let state = dir.path().join("state");
    let tail = format!(
        "[keys]\ndump_dir = \"{}\"\nrotate_interval = \"1s\"\nkeep = 7\n",
        state.display()
    );
    let cfg = write_config(dir.path(), "ntsd.toml", "auto", &tail);
    let mut previous: Option<NtsClient> = None;
    let start = Instant::now();
    for round in 0..8u64 {
        let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
        assert!(
            !s.log_text().contains("DAMAGED"),
            "round {round}: {}",
            s.log_text()
        );
        if let Some(mut c) = previous.take() {
            assert_eq!(
                try_cookie(&mut c, s.ntp_port, round),
                Outcome::Authenticated,
                "round {round}: a cookie from before the crash was refused"
            );
        }
        let (c, _) = client_of(&s);
        previous = Some(c);
        // Kill at varying points of the rotation cycle.
        std::thread::sleep(Duration::from_millis(150 + (round * 173) % 900));
        s.kill9();
        assert!(
            keyrotate::KeyStore::read(&state).unwrap().is_some(),
            "round {round}: key file unreadable"
        );
        assert!(start.elapsed() < Duration::from_secs(60));
    }
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("corrupt")), "{names:?}");
}

/// Changing `rotate_interval` keeps the old keys aside instead of
/// overwriting them; reverting the setting restores them, and the cookies
/// they sealed open again.
#[test]
fn reverting_rotate_interval_restores_the_keys() {
    let dir = pki_dir();
    let state = dir.path().join("state");
    let config = |interval: &str| {
        let tail = format!(
            "[keys]\ndump_dir = \"{}\"\nrotate_interval = \"{interval}\"\n",
            state.display()
        );
        write_config(dir.path(), "ntsd.toml", "auto", &tail)
    };
    let s = Ntsd::spawn(dir.path().to_owned(), &config("1h"));
    let (mut client, _) = client_of(&s);
    let hourly = std::fs::read(state.join("keys")).unwrap();
    assert!(s.terminate().success());

    let s = Ntsd::spawn(dir.path().to_owned(), &config("2h"));
    assert_eq!(
        std::fs::read(state.join("keys.interval-3600s")).unwrap(),
        hourly,
        "the hourly keys were not kept aside as they were"
    );
    assert!(s.log_text().contains("kept aside"), "{}", s.log_text());
    assert_eq!(try_cookie(&mut client, s.ntp_port, 1), Outcome::Nak);
    assert!(s.terminate().success());

    let s = Ntsd::spawn(dir.path().to_owned(), &config("1h"));
    assert!(s.log_text().contains("restoring"), "{}", s.log_text());
    assert_eq!(
        try_cookie(&mut client, s.ntp_port, 2),
        Outcome::Authenticated
    );
    // The two-hourly keys wait in their turn; the restored copy is gone.
    assert!(state.join("keys.interval-7200s").exists());
    assert!(!state.join("keys.interval-3600s").exists());
}

/// One ntsd per key directory: a second `ntsd run` on the same dump_dir
/// is refused, naming the directory and the running pid, and leaves the
/// first's key file and pid file as they were; once the first stops, the
/// second starts on the same keys.
#[test]
fn a_second_server_on_the_same_key_directory_is_refused() {
    let dir = pki_dir();
    let (state, cfg) = persisted(dir.path());
    let first = Ntsd::spawn(dir.path().to_owned(), &cfg);
    let (mut client, _) = client_of(&first);
    let keys_before = std::fs::read(state.join("keys")).unwrap();
    let pid_before = std::fs::read_to_string(state.join("ntsd.pid")).unwrap();
    assert_eq!(pid_before.trim(), first.pid().to_string());

    let second_cfg = write_config(
        dir.path(),
        "second.toml",
        "auto",
        &format!("[keys]\ndump_dir = \"{}\"\n", state.display()),
    );
    let log = Ntsd::try_spawn(dir.path().to_owned(), &second_cfg)
        .err()
        .expect("a second server on the same dump_dir started");
    assert!(
        log.contains(&state.display().to_string())
            && log.contains(&format!("pid {}", first.pid()))
            && log.contains("in use"),
        "{log}"
    );
    assert_eq!(std::fs::read(state.join("keys")).unwrap(), keys_before);
    assert_eq!(
        std::fs::read_to_string(state.join("ntsd.pid")).unwrap(),
        pid_before
    );
    // The first still rotates on request, and still serves its cookies.
    let (ok, out) = keys_cli("rotate", &cfg);
    assert!(ok && out.contains("rotated"), "{out}");
    assert_eq!(
        try_cookie(&mut client, first.ntp_port, 1),
        Outcome::Authenticated
    );
    assert!(first.terminate().success());

    let second = Ntsd::spawn(dir.path().to_owned(), &second_cfg);
    assert_eq!(
        try_cookie(&mut client, second.ntp_port, 2),
        Outcome::Authenticated
    );
    assert_eq!(
        std::fs::read_to_string(state.join("ntsd.pid"))
            .unwrap()
            .trim(),
        second.pid().to_string()
    );
}

/// A key file from a newer release (a rollback) refuses the start with an
/// error saying so and stays byte for byte as it was.
#[test]
fn a_key_file_of_a_newer_version_refuses_the_start_untouched() {
    let dir = pki_dir();
    let (state, cfg) = persisted(dir.path());
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    assert!(s.terminate().success());
    let bytes = common::set_key_file_version(&state.join("keys"), 3);
    let files_before: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let log = Ntsd::try_spawn(dir.path().to_owned(), &cfg)
        .err()
        .expect("started on a key file it cannot read");
    assert!(log.contains("newer") && log.contains("version 3"), "{log}");
    assert!(!log.contains("DAMAGED"), "{log}");
    assert_eq!(std::fs::read(state.join("keys")).unwrap(), bytes);
    let files_after: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files_after, files_before, "a file was moved or added");
}
