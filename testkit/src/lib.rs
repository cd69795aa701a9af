//! What the workspace's tests share about the machine they run on: whether
//! an optional tool or privilege is there, and a skip that says why.
//!
//! A test that needs something optional (chronyd, root, libfaketime, io_uring)
//! starts with `if !require("what", present) { return; }`:
//! - present: the test runs;
//! - missing under `CI` (set by `.ci/run`): the test fails, so CI can never
//!   pass by skipping;
//! - missing elsewhere: the test returns (passes) and says so on the real
//!   standard error, which the test harness does not capture, so a plain
//!   `cargo test` shows every skip. When `NTSD_SKIP_LOG` names a file (as
//!   `scripts/test` sets it), the skip is also appended there, one line a
//!   skip, for the run's summary.

use std::io::Write;

/// Environment variable naming the file that collects skips.
pub const SKIP_LOG: &str = "NTSD_SKIP_LOG";

/// Returns `true` if the test should run; `false` (skip) only outside CI.
/// Panics in CI when `present` is false.
pub fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    let test = test_name();
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {what} is required in CI but missing");
    }
    let how = match what.starts_with("root") {
        true => "run scripts/test as root",
        false => "scripts/test as root installs it",
    };
    // Straight to the descriptor: libtest captures only print!/eprint!.
    let _ = writeln!(
        std::io::stderr(),
        "skipping {test}: {what} is not available ({how}; CI=1 makes this a failure)"
    );
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write per line, so parallel tests never interleave.
            let _ = f.write_all(format!("{test}\t{what}\n").as_bytes());
        }
    }
    false
}

/// `binary::test`: the test binary's name without cargo's hash, and the
/// test's (libtest names each test's thread after it).
pub fn test_name() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
            _ => s,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    format!("{binary}::{}", thread.name().unwrap_or("?"))
}

/// The effective uid, from /proc (keeping the tests free of unsafe code).
pub fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub fn is_root() -> bool {
    euid() == Some(0)
}

/// Whether `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(cmd);
            std::fs::metadata(&p).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_requirement_runs_the_test() {
        assert!(require("something present", true));
        assert!(have("sh"));
        assert!(!have("no-such-command-ntsd-testkit"));
    }

    #[test]
    fn the_test_name_names_binary_and_test() {
        let name = test_name();
        assert!(
            name.ends_with("::tests::the_test_name_names_binary_and_test"),
            "{name}"
        );
        assert!(name.starts_with("testkit::"), "{name}");
    }
}
