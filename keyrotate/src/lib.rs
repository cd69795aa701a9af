//! The master-key ring that seals and opens ntsd cookies.
//!
//! ```text
//! rotation task ── rotate(now) ─► build ring ─► KeyStore::save ─► ArcSwap::store
//! NTP workers ──── load() (no lock, no allocation) ─► CookieKeys::opening_keys(id)
//! ```
//!
//! Keys are named by epoch: `epoch = floor(unix time / rotate_interval)`, and
//! a key's id is its epoch. The ring holds the current epoch's key (it seals),
//! the `keep` previous ones and the next one (they only open). Holding the next
//! key lets a node open cookies from a peer whose schedule runs slightly
//! ahead. Rotation is driven by the `now` passed in, so it is tested without
//! sleeping.
//!
//! Where keys come from is a [`KeySource`]: random keys persisted in a
//! [`KeyStore`] (standalone), or keys derived from a shared secret
//! ([`FleetKeys`], nothing written to disk). A new ring is saved before it is
//! published, so every key that ever sealed a cookie is on disk first: a
//! crash at any moment loses no key that a client holds a cookie for.

pub mod ring;
pub mod source;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

pub use crate::ring::{KeyEntry, KeyRing};
pub use crate::source::{FleetKeys, KeySource, RandomKeys};
pub use crate::store::{KeyStore, LoadReport, Stored};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the system random number generator failed")]
    Random,
    #[error("rotate_interval must be at least 1 second")]
    ZeroInterval,
    #[error("keep must be between 1 and {MAX_KEEP}")]
    KeepOutOfRange,
    #[error("fleet secret {}: {reason}", path.display())]
    FleetSecret { path: PathBuf, reason: String },
    #[error("fleet keys are derived from the fleet secret and cannot be rotated by hand; roll the secret instead")]
    DerivedKeys,
    #[error("the key source returned no key")]
    NoKey,
    #[error("key store {}: {error}", path.display())]
    Store { path: PathBuf, error: String },
    /// The key directory belongs to another user than the one ntsd runs as.
    #[error("key store {}: is owned by uid {found}, not by uid {uid} that ntsd runs as; give ntsd a directory of its own (e.g. /var/lib/ntsd, or systemd's StateDirectory=ntsd), or chown it to uid {uid}", path.display())]
    NotOwner { path: PathBuf, found: u32, uid: u32 },
    /// Another process holds the key directory's lock.
    #[error("key directory {} is in use by another process (one ntsd per key directory)", path.display())]
    InUse { path: PathBuf },
}

/// Largest `keep`: the ring stays small (each key holds its expanded
/// schedule) and the key file's entry count fits its 16-bit field with room
/// for keys kept after clock steps. A thousand intervals is almost three
/// years at the default interval of a day.
pub const MAX_KEEP: u32 = 1000;

/// Keys one epoch may hold: forced rotations add one each time, the oldest
/// (never sealing again) go first beyond this.
pub const MAX_KEYS_PER_EPOCH: usize = 16;

/// When keys change and how long old ones stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Seconds per epoch (at least 1).
    pub interval: u64,
    /// Previous keys still accepted.
    pub keep: u32,
}

impl Schedule {
    pub fn epoch(&self, unix_secs: u64) -> u32 {
        // Epochs fit in u32 until 2106 even with a 1-second interval.
        u32::try_from(unix_secs / self.interval.max(1)).unwrap_or(u32::MAX)
    }
}

/// How the ring moved when it was brought to the clock's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    /// Still the same epoch.
    Unchanged,
    /// To the next epoch, on schedule.
    Rotated { to: u32 },
    /// Off schedule: the clock stepped back, or forward by more than one
    /// interval (a step, a suspended host, or a check that came late).
    Jumped { from: u32, to: u32 },
}

impl Movement {
    fn between(from: u32, to: u32) -> Self {
        match to.checked_sub(from) {
            Some(0) => Self::Unchanged,
            Some(1) => Self::Rotated { to },
            _ => Self::Jumped { from, to },
        }
    }
}

struct Inner {
    source: Box<dyn KeySource>,
    store: Option<KeyStore>,
}

/// The ring shared between the rotation task, the KE front end and workers.
///
/// The ring follows the wall clock in both directions: its current key is
/// always the key of the epoch of `now`, so cookies carry the id a peer
/// expects. What happens to the keys of the epochs left behind by a jump
/// depends on the mode:
/// - derived (fleet) keys: the ring is exactly the window around the new
///   epoch, the same ring every node with a correct clock holds;
/// - random (standalone) keys: every key that sealed within the last `keep`
///   epochs stays, open-only, for as many epochs as it had left before the
///   jump ([`KeyEntry::open_until`]), so no outstanding cookie is lost, and
///   no key of another epoch seals.
pub struct RotatingKeys {
    ring: ArcSwap<KeyRing>,
    schedule: Schedule,
    derived: bool,
    started: Movement,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for RotatingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingKeys")
            .field("schedule", &self.schedule)
            .field("current", &self.ring.load().current_id())
            .finish_non_exhaustive()
    }
}

impl RotatingKeys {
    /// Builds the ring for the epoch containing `now` (Unix seconds),
    /// reusing the keys of `previous` (a loaded ring), and saves it to
    /// `store` before returning.
    ///
    /// A loaded ring behind the clock means downtime: the keys older than
    /// the window have aged out. A loaded ring ahead of the clock means the
    /// clock stepped back (or was ahead when the file was written): its keys
    /// are kept as after a step back ([`RotatingKeys::started`] says so).
    pub fn new(
        schedule: Schedule,
        source: Box<dyn KeySource>,
        store: Option<KeyStore>,
        previous: Option<KeyRing>,
        now: u64,
    ) -> Result<Self, KeyError> {
        if schedule.interval == 0 {
            return Err(KeyError::ZeroInterval);
        }
        if !(1..=MAX_KEEP).contains(&schedule.keep) {
            return Err(KeyError::KeepOutOfRange);
        }
        let mut source = source;
        let derived = source.is_derived();
        let to = schedule.epoch(now);
        let (ring, started) = match previous {
            None => (
                advance(&schedule, &[], None, source.as_mut(), to, false)?,
                Movement::Unchanged,
            ),
            Some(prev) => {
                let from = prev.current_id();
                let retain = !derived && to < from;
                let ring = advance(
                    &schedule,
                    prev.entries(),
                    Some(from),
                    source.as_mut(),
                    to,
                    retain,
                )?;
                (ring, Movement::between(from, to))
            }
        };
        if let Some(s) = &store {
            s.save(schedule.interval, &ring)?;
        }
        Ok(Self {
            ring: ArcSwap::from_pointee(ring),
            schedule,
            derived,
            started,
            inner: Mutex::new(Inner { source, store }),
        })
    }

    /// How the loaded ring moved to the clock's epoch at start
    /// (`Unchanged` without a loaded ring).
    pub fn started(&self) -> Movement {
        self.started
    }

    /// A lock-free snapshot for the hot path.
    pub fn load(&self) -> Guard<Arc<KeyRing>> {
        self.ring.load()
    }

    /// A snapshot that may be held across calls.
    pub fn load_full(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// Whether keys are derived (fleet mode) rather than random and stored.
    pub fn is_derived(&self) -> bool {
        self.derived
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the ring to the epoch containing `now`, forward or back (see
    /// the type's docs). If the new ring cannot be saved, the old one stays
    /// in force and the error is returned, so no unsaved key ever seals.
    pub fn follow(&self, now: u64) -> Result<Movement, KeyError> {
        let mut inner = self.lock();
        let old = self.ring.load_full();
        let (from, to) = (old.current_id(), self.schedule.epoch(now));
        let movement = Movement::between(from, to);
        if movement == Movement::Unchanged {
            return Ok(movement);
        }
        let ring = self.moved(&old, inner.source.as_mut(), to)?;
        self.publish(&inner, ring)?;
        Ok(movement)
    }

    /// [`RotatingKeys::follow`], saying only whether the ring changed.
    #[cfg(test)]
    pub(crate) fn rotate(&self, now: u64) -> Result<bool, KeyError> {
        self.follow(now).map(|m| m != Movement::Unchanged)
    }

    fn moved(
        &self,
        old: &KeyRing,
        source: &mut dyn KeySource,
        to: u32,
    ) -> Result<KeyRing, KeyError> {
        let from = old.current_id();
        let jumped = matches!(Movement::between(from, to), Movement::Jumped { .. });
        let retain = !self.derived && jumped;
        advance(
            &self.schedule,
            old.entries(),
            Some(from),
            source,
            to,
            retain,
        )
    }

    /// Puts a new, never used key in front of the current epoch's keys and
    /// of the next epoch's (a drill, or after a suspected leak of the key
    /// file), after bringing the ring to the epoch of `now`. The keys it
    /// displaces keep opening the cookies they sealed until they age out.
    /// Returns the id of the current key. Refused for derived (fleet) keys.
    pub fn force_rotate(&self, now: u64) -> Result<u32, KeyError> {
        let mut inner = self.lock();
        if self.derived {
            return Err(KeyError::DerivedKeys);
        }
        let old = self.ring.load_full();
        let to = self.schedule.epoch(now);
        let moved = match to == old.current_id() {
            true => (*old).clone(),
            false => self.moved(&old, inner.source.as_mut(), to)?,
        };
        let epoch = moved.current_id();
        let mut entries = moved.entries().to_vec();
        for e in entries.iter_mut() {
            if e.id == epoch || e.id == epoch.saturating_add(1) {
                e.keys.insert(0, inner.source.fresh_key(e.id)?);
                e.keys.truncate(MAX_KEYS_PER_EPOCH);
            }
        }
        let ring = KeyRing::new(epoch, entries).ok_or(KeyError::NoKey)?;
        self.publish(&inner, ring)?;
        Ok(epoch)
    }

    fn publish(&self, inner: &Inner, ring: KeyRing) -> Result<(), KeyError> {
        if let Some(s) = &inner.store {
            s.save(self.schedule.interval, &ring)?;
        }
        self.ring.store(Arc::new(ring));
        Ok(())
    }
}

/// Rebuilds a loaded ring (for [`RotatingKeys::new`]); `None` if the file
/// was written with another interval (its ids mean other epochs).
pub fn ring_from_stored(stored: Stored, schedule: &Schedule) -> Option<KeyRing> {
    if stored.interval != schedule.interval {
        return None;
    }
    KeyRing::new(stored.current, stored.entries)
}

/// `epoch` moved by `shift` epochs, within `u32`.
fn shifted(epoch: u32, shift: i64) -> u32 {
    let moved = (i64::from(epoch) + shift).max(0);
    u32::try_from(moved).unwrap_or(u32::MAX)
}

/// The ring at epoch `to`: keys for the window `to - keep ..= to + 1`,
/// reusing those in `old` (whose current epoch was `from`), plus the kept
/// keys still open at `to`.
///
/// With `retain` (a jump of the clock, random keys), every old key that
/// sealed within the last `keep` epochs is kept for the epochs it had left,
/// counted in the new clock's frame, and keys kept after earlier jumps move
/// with the clock too. Without it, old keys outside the new window go.
fn advance(
    schedule: &Schedule,
    old: &[KeyEntry],
    from: Option<u32>,
    source: &mut dyn KeySource,
    to: u32,
    retain: bool,
) -> Result<KeyRing, KeyError> {
    let keep = schedule.keep;
    let shift = match (retain, from) {
        (true, Some(f)) => i64::from(to) - i64::from(f),
        _ => 0,
    };
    // The epoch up to which each old key must still open, in the new frame.
    let deadline = |e: &KeyEntry| -> Option<u32> {
        let kept = e.open_until.map(|u| shifted(u, shift));
        let sealed_recently = from.is_some_and(|f| e.id <= f && f - e.id <= keep) && retain;
        let own = sealed_recently.then(|| shifted(e.id.saturating_add(keep), shift));
        kept.max(own)
    };
    let first = to.saturating_sub(keep);
    let last = to.saturating_add(1);
    let mut entries = Vec::with_capacity((last - first) as usize + 1);
    for id in first..=last {
        let (keys, until) = match old.iter().find(|e| e.id == id) {
            Some(e) => (e.keys.clone(), deadline(e)),
            None => (source.keys_for(id)?, None),
        };
        entries.push(KeyEntry {
            id,
            starts: u64::from(id) * schedule.interval,
            keys,
            // The window alone keeps a key until `id + keep`.
            open_until: until.filter(|&u| u > id.saturating_add(keep)),
        });
    }
    let mut kept: Vec<KeyEntry> = old
        .iter()
        .filter(|e| e.id < first || e.id > last)
        .filter_map(|e| {
            let until = deadline(e).filter(|&u| u >= to)?;
            Some(KeyEntry {
                open_until: Some(until),
                ..e.clone()
            })
        })
        .collect();
    // A clock that keeps jumping to new epochs must not grow the ring
    // without bound: beyond twice a window, the keys closest to expiry go.
    let max_kept = 2 * (keep as usize + 1);
    if kept.len() > max_kept {
        kept.sort_by_key(|e| std::cmp::Reverse(e.open_until));
        kept.truncate(max_kept);
    }
    entries.extend(kept);
    KeyRing::new(to, entries).ok_or(KeyError::NoKey)
}

#[cfg(test)]
mod tests;
