//! `[keys]`: how master keys are kept (standalone in `dump_dir`, or fleet
//! keys derived from a shared secret) and rotated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::HumanDuration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    pub rotate_interval: HumanDuration,
    pub keep: u32,
    /// Where random master keys are persisted (standalone mode), as
    /// written; [`KeysConfig::state_dir`] says what it means. Unset:
    /// [`DEFAULT_DUMP_DIR`]; `""`: keys live in memory only.
    pub dump_dir: Option<PathBuf>,
    /// Fleet mode: derive keys from this shared secret instead.
    pub fleet_secret_file: Option<PathBuf>,
    /// Fleet secrets whose keys still open cookies but never seal (rolling
    /// the fleet secret).
    pub fleet_accept_secret_files: Vec<PathBuf>,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            rotate_interval: HumanDuration(Duration::from_secs(86_400)),
            keep: 7,
            dump_dir: None,
            fleet_secret_file: None,
            fleet_accept_secret_files: Vec::new(),
        }
    }
}

/// Where standalone keys live when `dump_dir` is not set.
pub const DEFAULT_DUMP_DIR: &str = "/var/lib/ntsd";

impl KeysConfig {
    /// The directory holding the key file and the pid file: `dump_dir`, or
    /// [`DEFAULT_DUMP_DIR`] when it is not set. `None` in fleet mode
    /// (nothing secret is written) and for `dump_dir = ""` (keys in memory
    /// only, asked for explicitly).
    pub fn state_dir(&self) -> Option<&Path> {
        if self.fleet_secret_file.is_some() {
            return None;
        }
        match &self.dump_dir {
            None => Some(Path::new(DEFAULT_DUMP_DIR)),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p),
        }
    }
}

impl KeysConfig {
    /// Rotation bounds, and one mode at a time.
    pub fn validate(&self) -> Result<(), String> {
        if self.rotate_interval.0 < Duration::from_secs(1) {
            return Err("[keys] rotate_interval: must be at least 1s".into());
        }
        if self.keep == 0 {
            return Err(
                "[keys] keep: must be at least 1 (clients need the previous key after a rotation)"
                    .into(),
            );
        }
        if self.keep > keyrotate::MAX_KEEP {
            return Err(format!(
                "[keys] keep: {} is above the maximum of {} (cookies stay valid for keep x rotate_interval; raise rotate_interval instead)",
                self.keep,
                keyrotate::MAX_KEEP
            ));
        }
        let explicit_dump_dir = self
            .dump_dir
            .as_ref()
            .is_some_and(|p| !p.as_os_str().is_empty());
        if self.fleet_secret_file.is_some() && explicit_dump_dir {
            return Err("[keys] dump_dir: not used with fleet_secret_file (fleet keys are derived from the secret and never written to disk); remove one of them".into());
        }
        if self.fleet_secret_file.is_none() && !self.fleet_accept_secret_files.is_empty() {
            return Err("[keys] fleet_accept_secret_files: requires fleet_secret_file".into());
        }
        Ok(())
    }
}
