//! `ntsd check-config` checks what `ntsd run` checks: a config it calls
//! valid starts, and what `run` refuses (or would trip over later) is an
//! error here too.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{is_root, pki_dir, require, write_config, Ntsd, BIN};

fn check(cfg: &Path) -> (bool, String) {
    common::output(
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(cfg),
    )
}

/// A self-signed certificate for localhost valid until `now + secs`
/// (negative: expired), written as `name.pem` and `name-key.pem`.
fn pair(dir: &Path, name: &str, secs: i64) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + Duration::from_secs((now - 30 * 86_400) as u64);
    p.not_after = epoch + Duration::from_secs((now + secs) as u64);
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    (c, k)
}

/// The test config with its certificate pair replaced by `chain`, `key`.
fn with_pair(dir: &Path, name: &str, chain: &Path, key: &Path, tail: &str) -> PathBuf {
    let cfg = write_config(dir, name, "auto", tail);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            &dir.join("chain.pem").display().to_string(),
            &chain.display().to_string(),
        )
        .replace(
            &dir.join("key.pem").display().to_string(),
            &key.display().to_string(),
        );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

#[test]
fn a_valid_config_is_valid_and_runs() {
    let dir = pki_dir();
    let cfg = write_config(dir.path(), "ntsd.toml", "auto", "");
    let (ok, out) = check(&cfg);
    assert!(ok && out.contains("configuration is valid"), "{out}");
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    assert!(s.terminate().success());
}

/// Certificate expiry: an error once expired, a warning within 14 days.
#[test]
fn certificate_expiry_is_an_error_or_a_warning() {
    let dir = pki_dir();
    let (c, k) = pair(dir.path(), "expired", -3600);
    let (ok, out) = check(&with_pair(dir.path(), "a.toml", &c, &k, ""));
    assert!(
        !ok && out.contains("error:") && out.contains("expired"),
        "{out}"
    );
    let (c, k) = pair(dir.path(), "soon", 5 * 86_400 + 600);
    let (ok, out) = check(&with_pair(dir.path(), "b.toml", &c, &k, ""));
    assert!(ok, "{out}");
    assert!(
        out.contains("warning:") && out.contains("expires in 5 days"),
        "{out}"
    );
    let (c, k) = pair(dir.path(), "later", 60 * 86_400);
    let (ok, out) = check(&with_pair(dir.path(), "c.toml", &c, &k, ""));
    assert!(ok && !out.contains("expires in"), "{out}");
}

/// A fleet secret that group or others can read, when the group is not
/// ntsd's own, is refused by `run`: an error here.
#[test]
fn a_group_readable_fleet_secret_of_another_group_is_an_error() {
    use std::os::unix::fs::MetadataExt;
    let dir = pki_dir();
    let secret = dir.path().join("fleet.secret");
    std::fs::write(&secret, [7u8; 32]).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let tail = format!("[keys]\nfleet_secret_file = \"{}\"\n", secret.display());
    let cfg = write_config(dir.path(), "ntsd.toml", "auto", &tail);
    let (ok, out) = check(&cfg);
    assert!(
        !ok && out.contains("0644") && out.contains("fleet_secret_file"),
        "{out}"
    );
    assert!(Ntsd::try_spawn(dir.path().to_owned(), &cfg).is_err());
    // Readable by the group ntsd runs as (its own here): fine for both.
    let own = std::fs::metadata(&secret).unwrap().gid();
    assert_eq!(own, egid());
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (ok, out) = check(&cfg);
    assert!(ok, "{out}");
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    assert!(s.terminate().success());
}

/// The effective gid, from /proc.
fn egid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A key file written by a newer release: `run` refuses it, and so does
/// the check.
#[test]
fn a_key_file_of_a_newer_version_is_an_error() {
    let dir = pki_dir();
    let cfg = write_config(dir.path(), "ntsd.toml", "auto", "");
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    assert!(s.terminate().success());
    let keys = dir.path().join("state/keys");
    let bytes = common::set_key_file_version(&keys, 9);
    let (ok, out) = check(&cfg);
    assert!(
        !ok && out.contains("newer ntsd") && out.contains("version 9"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&keys).unwrap(),
        bytes,
        "the check changed the file"
    );
}

/// As root: a dump_dir another user owns, and certificates the `[server]
/// user` cannot read, are errors, as `run` refuses the first and could
/// never reload the second.
#[test]
fn ownership_and_readability_for_the_server_user() {
    if !require("root (chown, [server] user)", is_root()) {
        return;
    }
    let dir = pki_dir();
    let state = dir.path().join("elsewhere");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    let tail = format!("[keys]\ndump_dir = \"{}\"\n", state.display());
    let cfg = write_config(dir.path(), "a.toml", "auto", &tail);
    let (ok, out) = check(&cfg);
    assert!(
        ok && out.contains("owned by uid 65534"),
        "root, no [server] user: a warning\n{out}"
    );
    let tail = format!(
        "[keys]\ndump_dir = \"{}\"\n[server]\nuser = \"root\"\n",
        state.display()
    );
    let cfg = write_config(dir.path(), "b.toml", "auto", &tail);
    let (ok, out) = check(&cfg);
    assert!(!ok && out.contains("owned by uid 65534"), "{out}");
    let log = Ntsd::try_spawn(dir.path().to_owned(), &cfg).err().unwrap();
    assert!(log.contains("owned by uid 65534"), "{log}");

    // The key is root's, 0600: nobody cannot read it after the drop.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tail = format!(
        "[keys]\ndump_dir = \"{}\"\n[server]\nuser = \"nobody\"\n",
        state.display()
    );
    let cfg = write_config(dir.path(), "c.toml", "auto", &tail);
    let (ok, out) = check(&cfg);
    assert!(
        !ok && out.contains("key.pem") && out.contains("not readable"),
        "{out}"
    );
    assert!(!out.contains("owned by uid"), "{out}");
    std::fs::set_permissions(
        dir.path().join("key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (ok, out) = check(&cfg);
    assert!(ok, "{out}");
}

/// An IPv6 address with a port, written without brackets, is refused
/// wherever an address goes, with the spelling that was meant.
#[test]
fn ipv6_addresses_with_a_port_need_brackets() {
    let dir = pki_dir();
    let cfg = write_config(dir.path(), "ntsd.toml", "auto", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    for (from, to, want) in [
        (
            "[ntp]\nlisten = [\"127.0.0.1:0\"",
            "[ntp]\nlisten = [\"::1:123\"",
            "\"[::1]:123\" for ::1 port 123",
        ),
        (
            "[metrics]\nlisten = \"127.0.0.1:0\"",
            "[metrics]\nlisten = \"::1:9460\"",
            "\"[::1]:9460\" for ::1 port 9460",
        ),
        (
            "source = \"local\"\nstratum = 1\nrefid = \"TEST\"",
            "source = \"upstream\"\nupstream = \"::1:1123\"",
            "\"[::1]:1123\" for ::1 port 1123",
        ),
    ] {
        assert!(text.contains(from), "{text}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        let (ok, out) = check(&bad);
        assert!(!ok, "{to}: {out}");
        assert!(
            out.contains("needs brackets") && out.contains(want),
            "{to}: {out}"
        );
    }
}
