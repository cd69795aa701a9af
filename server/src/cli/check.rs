//! `ntsd check-config`: what `ntsd run` checks at start, short of binding
//! sockets and taking the key directory's lock, so that a config it calls
//! valid is one `run` accepts.
//!
//! ```text
//! Config::validate (types, ranges) ─► [server] user exists, its groups
//!   ─► certificates: present? load (parse, key matches, not expired)?
//!      expiring within 14 days? readable by the user after the drop?
//!   ─► keys: fleet secret mode, group and length | dump_dir owner, mode, key file
//! ```
//!
//! Files that do not exist yet (a certificate certbot has not issued, a
//! Secret not mounted on this host) are warnings: `run` tolerates a
//! missing certificate (NTS-KE stays down until it appears) and reports a
//! missing fleet secret itself. What `run` refuses, or what would break
//! later (renewals the user cannot read), is an error.

use std::path::Path;

use crate::config::Config;

/// `ntsd check-config`: every warning and error, then the verdict.
pub fn run(path: &Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let found = check(&config, crate::time::clock::unix_secs() as i64);
    for w in &found.warnings {
        eprintln!("warning: {w}");
    }
    for e in &found.errors {
        eprintln!("error: {e}");
    }
    match found.errors.len() {
        0 => {
            println!("{}: configuration is valid", path.display());
            Ok(())
        }
        n => Err(format!(
            "{}: {n} problem{} that `ntsd run` would refuse or trip over (above)",
            path.display(),
            if n == 1 { "" } else { "s" }
        )),
    }
}

/// How far ahead an expiring certificate is a warning.
pub(crate) const EXPIRY_WARNING_DAYS: i64 = 14;

/// What the check found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Problems that `run` refuses or that would break the server later.
    pub(crate) errors: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

/// Checks `config` as `run` would at `now` (Unix seconds).
pub(crate) fn check(config: &Config, now: i64) -> Findings {
    let mut f = Findings::default();
    let invoker = rustix::process::geteuid().as_raw();
    let run_as = crate::system::privileges::run_as(&config.server).unwrap_or_else(|e| {
        f.errors.push(e);
        None
    });
    let user = run_as.as_ref().map(|r| (r.uid, r.groups.as_slice()));
    certificates(config, now, user, &mut f);
    keys(
        config,
        run_as.as_ref().map(crate::system::privileges::RunAs::owner),
        invoker,
        &mut f,
    );
    f
}

fn certificates(config: &Config, now: i64, user: Option<(u32, &[u32])>, f: &mut Findings) {
    let mut missing = false;
    for (key, path) in config.files() {
        if !path.exists() {
            f.warnings.push(format!(
                "{key}: {} does not exist yet; NTS-KE stays down until it does (NTP is served)",
                path.display()
            ));
            missing = true;
            continue;
        }
        if let Some((uid, groups)) = user {
            if !crate::system::privileges::readable_by(&path, uid, groups) {
                f.errors.push(format!(
                    "{key}: {} is not readable by the [server] user (uid {uid}, groups {groups:?}) ntsd drops to: renewals would be refused; make it readable by one of that user's groups",
                    path.display()
                ));
            }
        }
    }
    if missing {
        return;
    }
    match crate::ke::certs::load_set(&config.nts_ke.certificates(), now) {
        Err(e) => f
            .errors
            .push(format!("[nts_ke] {e}; ntsd would start with NTS-KE down")),
        Ok(set) => {
            for p in &set.pairs {
                let left = p.not_after - now;
                if left < EXPIRY_WARNING_DAYS * 86_400 {
                    f.warnings.push(format!(
                        "[nts_ke] certificate {} expires in {} days ({}): renew it",
                        p.chain.display(),
                        left / 86_400,
                        crate::time::clock::utc(u64::try_from(p.not_after).unwrap_or(0))
                    ));
                }
            }
        }
    }
}

fn keys(config: &Config, owner: Option<(u32, u32)>, invoker: u32, f: &mut Findings) {
    let cfg = &config.keys;
    if let Some(secret) = &cfg.fleet_secret_file {
        let group = crate::keys::ring::own_group(owner);
        let files = std::iter::once(("fleet_secret_file", secret.as_path())).chain(
            cfg.fleet_accept_secret_files
                .iter()
                .map(|p| ("fleet_accept_secret_files", p.as_path())),
        );
        for (key, path) in files {
            fleet_secret(key, path, group, f);
        }
        return;
    }
    let Some(dir) = cfg.state_dir() else {
        return;
    };
    // Without [server] user, `run` checks against the user it runs as. A
    // check run as root for a server that systemd starts as another user
    // (User=, DynamicUser=) cannot know that user: a directory of another
    // user is then only a warning.
    let (check_owner, lenient) = match owner {
        Some(o) => (Some(o), false),
        None => (None, invoker == 0),
    };
    match keyrotate::store::inspect(dir, check_owner) {
        Ok(i) => {
            f.warnings.extend(i.warnings);
            match i.file {
                Some(Err(e)) if keyrotate::store::is_newer(&e) => f.errors.push(format!(
                    "[keys] dump_dir: key file {}: {e}, written by a newer ntsd: `run` refuses to start on it (and leaves it alone)",
                    dir.join(keyrotate::store::FILE_NAME).display()
                )),
                Some(Err(e)) => f.warnings.push(format!(
                    "[keys] dump_dir: key file {} is damaged ({e}): `run` moves it aside and starts with new keys (clients run NTS-KE again)",
                    dir.join(keyrotate::store::FILE_NAME).display()
                )),
                Some(Ok(stored)) if stored.interval != cfg.rotate_interval.0.as_secs() => {
                    f.warnings.push(format!(
                        "[keys] dump_dir: the key file was written with rotate_interval {}s, not {}s: `run` keeps it aside and starts new keys",
                        stored.interval,
                        cfg.rotate_interval.0.as_secs()
                    ))
                }
                _ => {}
            }
        }
        Err(e @ keyrotate::KeyError::NotOwner { .. }) if lenient => f.warnings.push(format!(
            "[keys] dump_dir: {e} (fine if ntsd runs as that user, e.g. under systemd's User=; as root `run` refuses it)"
        )),
        Err(e) => f.errors.push(format!("[keys] dump_dir: {e}")),
    }
}

fn fleet_secret(key: &str, path: &Path, group: u32, f: &mut Findings) {
    if !path.exists() {
        f.warnings.push(format!(
            "[keys] {key}: {} does not exist on this host (required by `ntsd run`)",
            path.display()
        ));
        return;
    }
    if let Err(e) = keyrotate::source::check_secret_mode(path, group) {
        f.errors.push(format!("[keys] {key}: {e}"));
        return;
    }
    match std::fs::metadata(path) {
        Ok(m) if m.len() < keyrotate::source::MIN_SECRET_LEN as u64 => f.errors.push(format!(
            "[keys] {key}: {} holds {} bytes; at least {} random bytes are required",
            path.display(),
            m.len(),
            keyrotate::source::MIN_SECRET_LEN
        )),
        Ok(_) => {}
        Err(e) => f
            .errors
            .push(format!("[keys] {key}: {}: {e}", path.display())),
    }
}
