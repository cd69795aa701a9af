//! `ntsd keys list` and `ntsd keys rotate`.

use std::path::Path;
use std::time::Duration;

use keyrotate::{ring_from_stored, KeyStore, RotatingKeys};

use crate::config::{Config, KeysConfig};
use crate::keys::pid::PID_FILE;
use crate::keys::ring::{fleet_source, schedule};
use crate::system::privileges::{run_as, RunAs};
use crate::time::clock::{unix_secs, utc};

/// `ntsd keys list`: ids, start times and roles, never key bytes. Reads
/// without changing anything. The user and group the server runs as
/// (`[server] user`) count: their group may read a fleet secret.
pub fn list(config: &Path) -> Result<(), String> {
    let config = Config::load(config).map_err(|e| e.to_string())?;
    let owner = run_as(&config.server)?.as_ref().map(RunAs::owner);
    print_out(&list_keys(&config.keys, unix_secs(), owner)?);
    Ok(())
}

/// `ntsd keys rotate`: signals the running server (SIGUSR1) and waits for
/// the key file to change.
pub fn rotate(config: &Path) -> Result<(), String> {
    let config = Config::load(config).map_err(|e| e.to_string())?;
    print_out(&rotate_keys(&config.keys)?);
    Ok(())
}

fn print_out(out: &str) {
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
}

/// The listing: ids, start times and roles.
fn list_keys(cfg: &KeysConfig, now: u64, owner: Option<(u32, u32)>) -> Result<String, String> {
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

/// Signals the server and waits; what happened.
fn rotate_keys(cfg: &KeysConfig) -> Result<String, String> {
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
    crate::system::signals::signal_usr1(pid)
        .map_err(|e| format!("cannot signal pid {pid}: {e}"))?;
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
