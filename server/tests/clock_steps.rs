//! Master keys follow the wall clock: two fleet nodes, one of them started
//! with its clock wrong by several intervals (libfaketime, Debian package
//! `faketime`, reading an offset from a file the test rewrites), then
//! corrected. Within 2 s of the correction each node opens the other's
//! cookies.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{client_of, pki_dir, require, try_cookie, write_config, Ntsd, Outcome};

/// Debian's libfaketime, for this machine's architecture.
fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.filter_map(Result::ok)
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
}

const INTERVAL: u64 = 10;

fn fleet_config(dir: &Path, name: &str) -> PathBuf {
    let secret = dir.join("fleet.secret");
    if !secret.exists() {
        std::fs::write(&secret, (100u8..148).collect::<Vec<_>>()).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    let tail = format!(
        "[keys]\nfleet_secret_file = \"{}\"\nrotate_interval = \"{INTERVAL}s\"\nkeep = 1\n",
        secret.display()
    );
    write_config(dir, name, "auto", &tail)
}

/// Whether a cookie of `from` opens on `to` (a fresh KE session each time,
/// so every try uses a cookie minted by `from`'s ring of that moment).
fn opens(from: &Ntsd, to: &Ntsd, seed: u64) -> Outcome {
    let (mut client, _) = client_of(from);
    try_cookie(&mut client, to.ntp_port, seed)
}

/// Runs the two-node scenario with node B's clock `offset` seconds off.
fn step_and_correct(offset: i64) {
    let Some(lib) = libfaketime() else {
        require("libfaketime (Debian package faketime)", false);
        return;
    };
    let dir = pki_dir();
    let clock = dir.path().join("faketime-offset");
    std::fs::write(&clock, format!("{offset:+}\n")).unwrap();
    let a = Ntsd::spawn(dir.path().to_owned(), &fleet_config(dir.path(), "a.toml"));
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap()),
        // Re-read at every clock read, so the correction lands at once.
        ("FAKETIME_NO_CACHE", "1"),
        // A real step moves the wall clock only. (libfaketime's default
        // shifts CLOCK_MONOTONIC as well, which the kernel never does: the
        // correction would then step tokio's timers back by 80 s.)
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let b = Ntsd::try_spawn_env(
        dir.path().to_owned(),
        &fleet_config(dir.path(), "b.toml"),
        &env,
    )
    .unwrap_or_else(|log| panic!("node B did not start:\n{log}"));

    // The wrong clock puts B on another epoch: the nodes refuse each other.
    let (_, epoch_a) = client_of(&a);
    let (_, epoch_b) = client_of(&b);
    let off_by = i64::from(epoch_b) - i64::from(epoch_a);
    assert!(
        off_by.abs() >= offset.abs() / INTERVAL as i64 - 1,
        "B is not on a wrong epoch: A {epoch_a}, B {epoch_b}\n{}",
        b.log_text()
    );
    assert_eq!(opens(&a, &b, 1), Outcome::Nak);
    assert_eq!(opens(&b, &a, 2), Outcome::Nak);

    // Correct B's clock.
    std::fs::write(&clock, "+0\n").unwrap();
    let corrected = Instant::now();
    let mut seed = 10;
    let elapsed = loop {
        seed += 2;
        let both = opens(&a, &b, seed) == Outcome::Authenticated
            && opens(&b, &a, seed + 1) == Outcome::Authenticated;
        if both {
            break corrected.elapsed();
        }
        assert!(
            corrected.elapsed() < Duration::from_secs(2),
            "2 s after the correction the nodes still refuse each other's cookies\nB's log:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("offset {offset:+} s: cookies cross again {elapsed:?} after the correction");
    assert_eq!(b.wait_metric("ntsd_keys_clock_steps_total", 1), 1);
    assert_eq!(a.metric("ntsd_keys_clock_steps_total"), 0);
    let steps = b
        .log_text()
        .lines()
        .filter(|l| l.contains("wall clock stepped"))
        .count();
    assert_eq!(steps, 1, "one log line per step:\n{}", b.log_text());
}

#[test]
fn a_node_started_ahead_and_stepped_back_rejoins_its_fleet() {
    step_and_correct(8 * INTERVAL as i64);
}

#[test]
fn a_node_started_behind_and_stepped_forward_rejoins_its_fleet() {
    step_and_correct(-8 * INTERVAL as i64);
}
