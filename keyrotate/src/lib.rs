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
    #[error("fleet secret {}: {reason}", path.display())]
    FleetSecret { path: PathBuf, reason: String },
    #[error("fleet keys are derived from the fleet secret and cannot be rotated by hand; roll the secret instead")]
    DerivedKeys,
    #[error("the key source returned no key")]
    NoKey,
    #[error("key store {}: {error}", path.display())]
    Store { path: PathBuf, error: String },
}

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

struct Inner {
    source: Box<dyn KeySource>,
    store: Option<KeyStore>,
}

/// The ring shared between the rotation task, the KE front end and workers.
pub struct RotatingKeys {
    ring: ArcSwap<KeyRing>,
    schedule: Schedule,
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
    /// reusing the keys of `previous` (a loaded ring) that are still in the
    /// window, and saves it to `store` before returning.
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
        let mut source = source;
        // Never move behind a loaded ring, even if the clock stepped back.
        let epoch = schedule
            .epoch(now)
            .max(previous.as_ref().map_or(0, KeyRing::current_id));
        let old = previous.map_or_else(Vec::new, |r| r.entries().to_vec());
        let ring = build_ring(&schedule, &old, source.as_mut(), epoch)?;
        if let Some(s) = &store {
            s.save(schedule.interval, &ring)?;
        }
        Ok(Self {
            ring: ArcSwap::from_pointee(ring),
            schedule,
            inner: Mutex::new(Inner { source, store }),
        })
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
        self.lock().source.is_derived()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the ring to the epoch containing `now`. Returns whether it
    /// changed. A clock stepping backwards never moves the ring back. If the
    /// new ring cannot be saved, the old one stays in force and the error is
    /// returned, so no unsaved key ever seals.
    pub fn rotate(&self, now: u64) -> Result<bool, KeyError> {
        let mut inner = self.lock();
        let old = self.ring.load_full();
        let epoch = self.schedule.epoch(now);
        if epoch <= old.current_id() {
            return Ok(false);
        }
        let ring = build_ring(&self.schedule, old.entries(), inner.source.as_mut(), epoch)?;
        self.publish(&inner, ring)?;
        Ok(true)
    }

    /// Replaces the sealing key now (a drill, or after a suspected leak of
    /// the key file) and regenerates the next key. The replaced key keeps
    /// opening the cookies it sealed until it ages out. Returns the id of
    /// the current key. Refused for derived (fleet) keys.
    pub fn force_rotate(&self, now: u64) -> Result<u32, KeyError> {
        let mut inner = self.lock();
        let old = self.ring.load_full();
        let epoch = self.schedule.epoch(now).max(old.current_id());
        let mut entries = build_ring(&self.schedule, old.entries(), inner.source.as_mut(), epoch)?
            .entries()
            .to_vec();
        for e in entries.iter_mut() {
            if e.id == epoch {
                e.keys.insert(0, inner.source.fresh_key(epoch)?);
            } else if e.id > epoch {
                e.keys = vec![inner.source.fresh_key(e.id)?];
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

    /// Seconds from `now` until the next epoch starts.
    pub fn seconds_until_rotation(&self, now: u64) -> u64 {
        let i = self.schedule.interval.max(1);
        i - now % i
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

/// Keys for epochs `epoch - keep ..= epoch + 1`, reusing those in `old`.
fn build_ring(
    schedule: &Schedule,
    old: &[KeyEntry],
    source: &mut dyn KeySource,
    epoch: u32,
) -> Result<KeyRing, KeyError> {
    let first = epoch.saturating_sub(schedule.keep);
    let last = epoch.saturating_add(1);
    let mut entries = Vec::with_capacity((last - first) as usize + 1);
    for id in first..=last {
        let keys = match old.iter().find(|e| e.id == id) {
            Some(e) => e.keys.clone(),
            None => source.keys_for(id)?,
        };
        entries.push(KeyEntry {
            id,
            starts: u64::from(id) * schedule.interval,
            keys,
        });
    }
    KeyRing::new(epoch, entries).ok_or(KeyError::NoKey)
}

#[cfg(test)]
mod tests;
