//! Interleaved mode (RFC 9769) with the real client: chronyd with `server
//! ... xleave`, plain and `nts`, against both back ends, must get
//! interleaved replies carrying the kernel's transmit timestamps. chrony's
//! measurements log marks each sample: `4I` for interleaved (`4B` basic),
//! then the source of the transmit and receive timestamps (`K`: kernel).
//! Runs as root; skipped only outside CI when chronyd or root is missing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{is_root, require, Ntsd};

const CHRONYD: &str = "/usr/sbin/chronyd";

fn chrony_usable() -> bool {
    require("chronyd", Path::new(CHRONYD).exists()) && require("root", is_root())
}

/// A chronyd process, killed on drop.
struct Chronyd(std::process::Child);

impl Drop for Chronyd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The mode column of each sample in chrony's measurements log (`4I`,
/// `4B`) with the transmit timestamp's source (`K`, `D`, `H`).
fn samples(log: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = f.len();
            (n >= 3).then(|| (f[n - 3].to_owned(), f[n - 2].to_owned()))
        })
        .collect()
}

type Samples = Vec<(String, String)>;

fn interleaved(got: &Samples) -> usize {
    got.iter().filter(|(m, _)| m.ends_with('I')).count()
}

/// Runs chronyd with `server localhost ... xleave` (plus `nts` when asked)
/// against `s` until its measurements log satisfies `enough` or 30 s
/// pass; returns the samples.
fn xleave_samples(s: &Ntsd, nts: bool, enough: impl Fn(&Samples) -> bool) -> Samples {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run_dir = d.join("run");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let auth = match nts {
        true => format!("nts ntsport {}", s.ke_port),
        false => String::new(),
    };
    let conf = format!(
        "server localhost port {port} {auth} xleave minpoll -4 maxpoll -4 iburst\n\
         ntstrustedcerts {ca}\ncmdport 0\nbindcmdaddress {sock}\npidfile {pid}\n\
         logdir {logs}\nlog measurements\n",
        port = s.ntp_port,
        ca = s.ca().display(),
        sock = run_dir.join("chronyd.sock").display(),
        pid = d.join("chronyd.pid").display(),
        logs = d.display(),
    );
    std::fs::write(d.join("chrony.conf"), conf).unwrap();
    let _client = Chronyd(
        Command::new(CHRONYD)
            .args(["-d", "-x", "-u", "root", "-f"])
            .arg(d.join("chrony.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("chronyd.log")).unwrap())
            .spawn()
            .expect("start chronyd"),
    );
    let log = d.join("measurements.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = samples(&log);
        let done = enough(&got);
        if done || Instant::now() > deadline {
            if !done {
                eprintln!(
                    "chronyd log:\n{}",
                    std::fs::read_to_string(d.join("chronyd.log")).unwrap_or_default()
                );
            }
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn chrony_xleave_gets_interleaved_replies_with_kernel_transmit_timestamps() {
    if !chrony_usable() {
        return;
    }
    for backend in common::backends() {
        for nts in [false, true] {
            let s = Ntsd::start(backend);
            let got = xleave_samples(&s, nts, |g| interleaved(g) >= 8);
            let what = format!("{backend}, nts {nts}");
            let interleaved: Vec<_> = got.iter().filter(|(m, _)| m.ends_with('I')).collect();
            assert!(
                interleaved.len() >= 8,
                "{what}: chrony's samples {got:?}\nserver log:\n{}",
                s.log_text()
            );
            // Every interleaved sample carries the kernel's transmit timestamp.
            assert!(
                interleaved.iter().all(|(_, tx)| tx == "K"),
                "{what}: {got:?}"
            );
            // The first replies of an exchange are basic: there is nothing to
            // interleave with yet.
            assert!(
                got.first().is_some_and(|(m, _)| m.ends_with('B')),
                "{what}: {got:?}"
            );
            let replies = s.metric("ntsd_ntp_interleaved_responses_total");
            assert!(replies >= 8, "{what}: {replies}");
            assert_eq!(
                s.metric("ntsd_ntp_kernel_tx_timestamps_total"),
                replies,
                "{what}"
            );
            assert_eq!(s.metric("ntsd_ntp_tx_timestamps_lost_total"), 0, "{what}");
            assert!(s.metric("ntsd_ntp_timestamps_held") >= 1, "{what}");
            if nts {
                assert!(s.metric("ntsd_ntp_responses_total{kind=\"nts\"}") >= replies);
                assert_eq!(s.metric_sum("ntsd_ntp_naks_total"), 0, "{what}");
            }
            // The client log has chrony's address with its interleaved and
            // NTS replies (columns: address ntp drop interval last
            // interleaved nts).
            let (status, body) = s.http_get("/clients");
            assert_eq!(status, 200, "{body}");
            let row: Vec<i64> = body
                .lines()
                .find(|l| l.starts_with("127.0.0.1 ") || l.starts_with("::1 "))
                .unwrap_or_else(|| panic!("{what}: chrony not in the client log:\n{body}"))
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(i64::MIN))
                .collect();
            let replies = replies as i64;
            assert!(row[0] >= replies && row[4] >= 8, "{what}: {body}");
            // minpoll -4, and iburst's first requests faster still.
            assert!((-6..=-3).contains(&row[2]), "{what}: interval: {body}");
            assert_eq!(row[5] >= replies, nts, "{what}: {body}");
            assert!(s.terminate().success());
        }
    }
}

/// With `[ntp] interleaved = false` the same client gets basic replies
/// only, as before this mode existed.
#[test]
fn interleaved_mode_can_be_turned_off() {
    if !chrony_usable() {
        return;
    }
    let s = Ntsd::start_with("portable", "interleaved = false", "", "");
    let got = xleave_samples(&s, false, |g| g.len() >= 6);
    assert!(got.len() >= 4, "{got:?}");
    assert!(got.iter().all(|(m, _)| m.ends_with('B')), "{got:?}");
    assert_eq!(s.metric("ntsd_ntp_interleaved_responses_total"), 0);
    assert!(s.terminate().success());
}
