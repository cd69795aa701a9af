//! Setting up the master-key ring from the config, and the `ntsd keys`
//! commands.
//!
//! Modes: fleet (`fleet_secret_file`: keys derived, nothing on disk),
//! standalone persisted (`dump_dir`, default `/var/lib/ntsd`: random keys
//! in `dump_dir/keys`), or standalone in memory (`dump_dir = ""`: a restart
//! invalidates every cookie).

use std::path::Path;
use std::time::Duration;

use keyrotate::{
    ring_from_stored, FleetKeys, KeySource, KeyStore, RandomKeys, RotatingKeys, Schedule,
};

use crate::clock::utc;
use crate::config::KeysConfig;

/// The running server's pid, kept in the dump directory for `keys rotate`.
pub const PID_FILE: &str = "ntsd.pid";

pub fn schedule(cfg: &KeysConfig) -> Schedule {
    Schedule {
        interval: cfg.rotate_interval.0.as_secs(),
        keep: cfg.keep,
    }
}

/// The group ntsd runs as: `owner`'s (after the privilege drop), else
/// the process's own.
pub fn own_group(owner: Option<(u32, u32)>) -> u32 {
    owner.map_or_else(|| rustix::process::getegid().as_raw(), |(_, gid)| gid)
}

fn fleet_source(
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
pub fn open(cfg: &KeysConfig, now: u64, owner: Option<(u32, u32)>) -> Result<RotatingKeys, String> {
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

/// `ntsd keys list`: ids, start times and roles, never key bytes. Reads
/// without changing anything.
///
/// `owner` is the user and group the server runs as (`[server] user`),
/// whose group may read a fleet secret.
pub fn list(cfg: &KeysConfig, now: u64, owner: Option<(u32, u32)>) -> Result<String, String> {
    let sched = schedule(cfg);
    let (ring, origin) = if let Some(secret) = &cfg.fleet_secret_file {
        let keys = RotatingKeys::new(sched, fleet_source(cfg, secret, owner)?, None, None, now)
            .map_err(|e| e.to_string())?;
        (
            keys.load_full(),
            format!("fleet keys derived from {}", secret.display()),
        )
    } else if let Some(dir) = cfg.state_dir() {
        let stored = KeyStore::read(dir)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "no key file in {} (the server creates it at start)",
                    dir.display()
                )
            })?;
        let interval = stored.interval;
        let ring = ring_from_stored(stored, &sched).ok_or_else(|| {
            format!(
                "key file in {} was written with rotate_interval {interval}s, not {}s",
                dir.display(),
                sched.interval
            )
        })?;
        (
            std::sync::Arc::new(ring),
            format!(
                "key file {}",
                dir.join(keyrotate::store::FILE_NAME).display()
            ),
        )
    } else {
        return Err("[keys] dump_dir = \"\": keys exist only inside the running server".into());
    };
    let mut out = format!(
        "{origin}; rotate_interval {}s, keep {}\n",
        sched.interval, sched.keep
    );
    out.push_str(&format!(
        "{:>10}  {:<20}  {:<5}  role\n",
        "id", "starts (UTC)", "keys"
    ));
    let now_epoch = sched.epoch(now);
    for e in ring.entries() {
        let current = ring.current_id();
        let role = if e.id == current {
            "seals and opens".to_owned()
        } else if let Some(until) = e.open_until.filter(|_| {
            e.id < current.saturating_sub(sched.keep) || e.id > current.saturating_add(1)
        }) {
            format!("opens until epoch {until} (kept after a clock step)")
        } else if e.id == current.saturating_add(1) {
            "next: opens".to_owned()
        } else {
            "opens".to_owned()
        };
        out.push_str(&format!(
            "{:>10}  {:<20}  {:<5}  {role}\n",
            e.id,
            utc(e.starts),
            e.keys.len()
        ));
    }
    if now_epoch > ring.current_id() {
        out.push_str(&format!(
            "note: the file's current key {} is behind the present epoch {now_epoch}; a running server rotates at its next check\n",
            ring.current_id()
        ));
    }
    Ok(out)
}

/// `ntsd keys rotate`: signals the running server (SIGUSR1) and waits for
/// the key file to change.
pub fn rotate(cfg: &KeysConfig) -> Result<String, String> {
    if cfg.fleet_secret_file.is_some() {
        return Err(keyrotate::KeyError::DerivedKeys.to_string());
    }
    let dir = cfg
        .state_dir()
        .ok_or("[keys] dump_dir = \"\", so the running server cannot be found; send SIGUSR1 to its pid instead")?;
    let pid_path = dir.join(PID_FILE);
    let pid: i32 = std::fs::read_to_string(&pid_path)
        .map_err(|e| {
            format!(
                "cannot read {}: {e} (is ntsd running with this config?)",
                pid_path.display()
            )
        })?
        .trim()
        .parse()
        .map_err(|_| format!("{} does not hold a pid", pid_path.display()))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "ntsd" {
        return Err(format!(
            "{} names pid {pid}, which is not a running ntsd (stale pid file?)",
            pid_path.display()
        ));
    }
    let key_file = dir.join(keyrotate::store::FILE_NAME);
    let before = std::fs::read(&key_file).unwrap_or_default();
    crate::sys::signal_usr1(pid).map_err(|e| format!("cannot signal pid {pid}: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if std::fs::read(&key_file).unwrap_or_default() != before {
            let stored = KeyStore::read(dir).map_err(|e| e.to_string())?;
            let id = stored.map_or(0, |s| s.current);
            return Ok(format!(
                "rotated: pid {pid} now seals with a new key for epoch {id}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "pid {pid} did not rewrite {} within 10 s; see its log",
        key_file.display()
    ))
}

/// Writes the pid file (given to `owner`, the user ntsd drops to, if
/// any); removed again when the returned guard drops, through a descriptor
/// of the directory, so also after the privileges are gone.
pub fn write_pid(dir: &Path, owner: Option<(u32, u32)>) -> Result<PidFile, String> {
    use rustix::fs::{Mode, OFlags};
    let path = dir.join(PID_FILE);
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    std::fs::write(&path, format!("{}\n", std::process::id())).map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(err)?;
    }
    let dirfd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    Ok(PidFile { dirfd })
}

#[derive(Debug)]
pub struct PidFile {
    dirfd: std::os::fd::OwnedFd,
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(&self.dirfd, PID_FILE, rustix::fs::AtFlags::empty());
    }
}
