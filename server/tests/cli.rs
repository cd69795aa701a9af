//! The client-side commands as a shell uses them: a closed stdout ends
//! them quietly, and `ntsd ready` finds the metrics endpoint where the host
//! has no IPv6.

mod common;

use std::process::{Command, Stdio};

use common::{pki_dir, require, write_config, Ntsd, BIN};

/// Runs `args` with a stdout whose reader is already gone (as `| head -1`
/// leaves it); returns the exit status and what was written to stderr.
fn with_closed_stdout(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ntsd query ... | head -1` and the other printing commands end without
/// a panic (no message, no abort) when their reader goes away.
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let s = Ntsd::start("auto");
    let cfg = s.dir.join("ntsd.toml");
    let target = format!("localhost:{}", s.ke_port);
    let ca = s.ca().display().to_string();
    let metrics = format!("http://127.0.0.1:{}", s.metrics_port);
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["query", target.as_str(), "--ca", ca.as_str()],
        vec!["stats", "--metrics", metrics.as_str()],
        vec!["ready", "--metrics", metrics.as_str()],
        vec!["keys", "list", "--config", cfg],
        vec!["check-config", "--config", cfg],
        vec!["--help"],
        vec!["--version"],
    ] {
        let (status, err) = with_closed_stdout(&args);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // Ended by SIGPIPE, as `cat` would be, or done before writing.
        assert!(
            status.success() || status.signal() == Some(libc_sigpipe()),
            "{args:?}: {status:?}: {err}"
        );
        assert_ne!(status.signal(), Some(6), "{args:?} aborted: {err}");
    }
}

fn libc_sigpipe() -> i32 {
    13
}

/// `ntsd ready --config` with `[metrics] listen = "[::]:PORT"` in a
/// network namespace without IPv6 (as older Docker gives containers):
/// `[::1]` cannot be reached, so it asks 127.0.0.1, which the `[::]`
/// listener also serves.
#[test]
fn ready_falls_back_to_ipv4_loopback_without_ipv6() {
    if !require("root (network namespace)", common::is_root()) {
        return;
    }
    let dir = pki_dir();
    let cfg = write_config(dir.path(), "ntsd.toml", "auto", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(r#"["127.0.0.1:0", "[::1]:0"]"#, r#"["127.0.0.1:0"]"#)
        .replace(
            "[metrics]\nlisten = \"127.0.0.1:0\"",
            "[metrics]\nlisten = \"[::]:9460\"",
        );
    assert!(text.contains("\"[::]:9460\""), "{text}");
    std::fs::write(&cfg, text).unwrap();
    let mut cmd = common::in_namespaces(
        "ip link set lo up; sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1; exec \"$0\" run --config \"$1\"",
    );
    cmd.arg(BIN).arg(&cfg);
    let s = Ntsd::try_spawn_command(dir.path().to_owned(), cmd)
        .unwrap_or_else(|log| panic!("ntsd did not start:\n{log}"));
    let pid = s.pid().to_string();
    let inside = |args: &[&str]| {
        common::output(
            Command::new("nsenter")
                .args(["-t", &pid, "-n", "--", BIN])
                .args(args),
        )
    };
    let (ok, out) = inside(&["ready", "--live", "--config", cfg.to_str().unwrap()]);
    assert!(ok && out.contains("ok"), "{out}\n{}", s.log_text());
    let (ok, out) = inside(&["stats", "--config", cfg.to_str().unwrap()]);
    assert!(ok && out.contains("NTP packets received"), "{out}");
    assert!(s.terminate().success());
}

/// `ntsd --version` names the release and the commit it was built from.
#[test]
fn version_names_the_release_and_the_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let rest = text
        .strip_prefix(&format!("ntsd {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text}"));
    let from_git = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.git")
        .exists();
    if from_git && std::env::var_os("NTSD_COMMIT").is_none() {
        assert_eq!(rest.len(), 12, "{text}");
        assert!(rest.chars().all(|c| c.is_ascii_hexdigit()), "{text}");
    }
}

/// Every command that reads the configuration defaults to the packaged
/// `/etc/ntsd/config.toml`, and says which file it could not read.
#[test]
fn commands_default_to_the_packaged_config() {
    let packaged = std::path::Path::new("/etc/ntsd/config.toml").exists();
    if !require(
        "a host without /etc/ntsd/config.toml (the default under test)",
        !packaged,
    ) {
        return;
    }
    for args in [
        &["check-config"][..],
        &["keys", "list"],
        &["stats"],
        &["clients"],
        &["ready"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains("/etc/ntsd/config.toml"), "{args:?}: {err}");
    }
    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("[default: /etc/ntsd/config.toml]")
            && help.contains("The configuration file"),
        "{help}"
    );
}
