//! The master-key ring as the config asks for it.
//!
//! Modes: fleet (`fleet_secret_file`: keys derived, nothing on disk),
//! standalone persisted (`dump_dir`, default `/var/lib/ntsd`: random keys
//! in `dump_dir/keys`), or standalone in memory (`dump_dir = ""`: a restart
//! invalidates every cookie).

use std::path::Path;

use keyrotate::{
    ring_from_stored, FleetKeys, KeySource, KeyStore, RandomKeys, RotatingKeys, Schedule,
};

use super::pid::PID_FILE;
use crate::config::KeysConfig;

pub(crate) fn schedule(cfg: &KeysConfig) -> Schedule {
    Schedule {
        interval: cfg.rotate_interval.0.as_secs(),
        keep: cfg.keep,
    }
}

/// The group ntsd runs as: `owner`'s (after the privilege drop), else
/// the process's own.
pub(crate) fn own_group(owner: Option<(u32, u32)>) -> u32 {
    owner.map_or_else(|| rustix::process::getegid().as_raw(), |(_, gid)| gid)
}

pub(crate) fn fleet_source(
    cfg: &KeysConfig,
    secret: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Box<dyn KeySource>, String> {
    let f = FleetKeys::from_files(secret, &cfg.fleet_accept_secret_files, own_group(owner))
        .map_err(|e| format!("[keys] {e}"))?;
    Ok(Box::new(f))
}

/// Builds the ring for `ntsd run`: loads and rotates forward a persisted
/// ring, moves a damaged key file aside (loudly), keeps the keys of another
/// `rotate_interval` aside (and takes back those of this one), and saves
/// the ring before returning, so a dump directory that cannot be written
/// fails the start.
///
/// `owner` is the user and group ntsd will run as after dropping its
/// privileges (`[server] user`): the key directory must be theirs.
pub(crate) fn open(
    cfg: &KeysConfig,
    now: u64,
    owner: Option<(u32, u32)>,
) -> Result<RotatingKeys, String> {
    let sched = schedule(cfg);
    if sched.interval < 3600 {
        tracing::warn!(
            seconds = sched.interval,
            "[keys] rotate_interval is below one hour; meant for tests and drills"
        );
    }
    if let Some(secret) = &cfg.fleet_secret_file {
        let keys = RotatingKeys::new(sched, fleet_source(cfg, secret, owner)?, None, None, now)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            secret = %secret.display(),
            open_only_secrets = cfg.fleet_accept_secret_files.len(),
            current = keys.load().current_id(),
            "fleet mode: master keys derived from the shared secret"
        );
        return Ok(keys);
    }
    let Some(dir) = cfg.state_dir() else {
        tracing::warn!("[keys] dump_dir = \"\": master keys live in memory and a restart invalidates every cookie");
        return RotatingKeys::new(sched, Box::<RandomKeys>::default(), None, None, now)
            .map_err(|e| e.to_string());
    };
    let dump_err = |e: keyrotate::KeyError| format!("[keys] dump_dir: {e}");
    let (store, report) = KeyStore::open_for(dir, now, owner).map_err(|e| match e {
        keyrotate::KeyError::InUse { .. } => in_use(dir),
        e => dump_err(e),
    })?;
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    if let Some((aside, reason)) = &report.corrupt {
        tracing::error!(
            moved_to = %aside.display(),
            %reason,
            "KEY FILE DAMAGED: moved aside and replaced by new keys; clients' cookies are invalid and they will run NTS-KE again"
        );
    }
    let mut restored = false;
    let mut stored = report.stored;
    if let Some(other) = stored.as_ref().filter(|s| s.interval != sched.interval) {
        let aside = store.set_aside(other.interval).map_err(dump_err)?;
        tracing::warn!(
            file_interval = other.interval,
            configured = sched.interval,
            kept_as = %aside.display(),
            "key file was written with another rotate_interval (its key ids are other epochs): kept aside, and restored if that interval is configured again; clients' cookies are invalid and they will run NTS-KE again"
        );
        stored = None;
    }
    if stored.is_none() {
        match store.take_aside(sched.interval) {
            Ok(Some(s)) => {
                tracing::info!(
                    from = %store.aside_path(sched.interval).display(),
                    "restoring the keys kept aside for this rotate_interval"
                );
                stored = Some(s);
                restored = true;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "keys kept aside for this rotate_interval are unreadable; left where they are")
            }
        }
    }
    let previous = stored.and_then(|s| ring_from_stored(s, &sched));
    let loaded = previous.as_ref().map(|r| r.current_id());
    let keys = RotatingKeys::new(
        sched,
        Box::<RandomKeys>::default(),
        Some(store.clone()),
        previous,
        now,
    )
    .map_err(dump_err)?;
    if restored {
        if let Err(e) = store.remove_aside(sched.interval) {
            tracing::warn!(error = %e, "restored keys are saved, but their old copy could not be removed");
        }
    }
    tracing::info!(
        dir = %dir.display(),
        loaded_current = ?loaded,
        current = keys.load().current_id(),
        "master keys persisted"
    );
    Ok(keys)
}

/// Why a key directory another ntsd holds is refused, naming that ntsd's
/// pid from its pid file when it has written one.
fn in_use(dir: &Path) -> String {
    let pid = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    let who = match pid {
        Some(pid) => format!("another ntsd (pid {pid})"),
        None => "another ntsd (still starting: no pid file yet)".to_owned(),
    };
    format!(
        "[keys] dump_dir: {} is in use by {who}; one ntsd per key directory: stop that one first, or give this one a dump_dir of its own",
        dir.display()
    )
}
