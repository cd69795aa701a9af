//! The master-key ring that seals and opens ntsd cookies.
//!
//! ```text
//! rotation task ── rotate(now) ──► build new KeyRing ──► ArcSwap::store
//! NTP workers ───── load() (no lock, no allocation) ──► CookieKeys::opening_key(id)
//! ```
//!
//! Keys are named by epoch: `epoch = floor(unix time / rotate_interval)`, and
//! a key's id is its epoch. The ring holds the current epoch's key (it seals),
//! the `keep` previous ones and the next one (they only open). Holding the next
//! key lets this node open cookies from a peer whose schedule runs slightly
//! ahead. Rotation is driven by the `now` passed in, so it is tested without
//! sleeping. Where keys come from is a [`KeySource`]: fresh random keys for a
//! standalone node; persistence and fleet derivation plug in the same way.

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use nts_proto::{CookieKeys, MasterKey};
use ring::rand::{SecureRandom, SystemRandom};

/// One master key and when its epoch starts.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub id: u32,
    /// Unix time at which the key's epoch begins.
    pub starts: u64,
    pub key: MasterKey,
}

/// An immutable snapshot of the accepted keys.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: u32,
    /// Ascending by id: previous keys, the current key, then the next key.
    entries: Vec<KeyEntry>,
}

impl KeyRing {
    pub fn current_id(&self) -> u32 {
        self.current
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    fn get(&self, id: u32) -> Option<&KeyEntry> {
        // A handful of entries: a linear scan beats anything fancier.
        self.entries.iter().find(|e| e.id == id)
    }
}

impl CookieKeys for KeyRing {
    fn sealing_key(&self) -> (u32, &MasterKey) {
        match self.get(self.current) {
            Some(e) => (e.id, &e.key),
            // The constructor always inserts the current key.
            None => unreachable!("key ring without its current key"),
        }
    }

    fn opening_key(&self, id: u32) -> Option<&MasterKey> {
        self.get(id).map(|e| &e.key)
    }
}

/// Supplies the key for an epoch that the ring does not hold yet.
pub trait KeySource: Send {
    fn key_for(&mut self, epoch: u32) -> Result<MasterKey, KeyError>;
}

/// Independent random keys from the system's CSPRNG (standalone mode).
#[derive(Debug)]
pub struct RandomKeys {
    rng: SystemRandom,
}

impl Default for RandomKeys {
    fn default() -> Self {
        Self {
            rng: SystemRandom::new(),
        }
    }
}

impl KeySource for RandomKeys {
    fn key_for(&mut self, _epoch: u32) -> Result<MasterKey, KeyError> {
        let mut bytes = [0u8; MasterKey::LEN];
        self.rng.fill(&mut bytes).map_err(|_| KeyError::Random)?;
        let key = MasterKey::from_bytes(&bytes);
        bytes.fill(0);
        Ok(key)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the system random number generator failed")]
    Random,
    #[error("rotate_interval must be at least 1 second")]
    ZeroInterval,
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
        u32::try_from(unix_secs / self.interval).unwrap_or(u32::MAX)
    }
}

/// The ring shared between the rotation task and the workers.
pub struct RotatingKeys {
    ring: ArcSwap<KeyRing>,
    schedule: Schedule,
    source: Mutex<Box<dyn KeySource>>,
}

impl std::fmt::Debug for RotatingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingKeys")
            .field("schedule", &self.schedule)
            .field("current", &self.ring.load().current)
            .finish_non_exhaustive()
    }
}

impl RotatingKeys {
    /// Builds the ring for the epoch containing `now` (Unix seconds).
    pub fn new(schedule: Schedule, source: Box<dyn KeySource>, now: u64) -> Result<Self, KeyError> {
        if schedule.interval == 0 {
            return Err(KeyError::ZeroInterval);
        }
        let empty = KeyRing {
            current: 0,
            entries: Vec::new(),
        };
        let mut source = source;
        let ring = build_ring(&schedule, &empty, source.as_mut(), schedule.epoch(now))?;
        Ok(Self {
            ring: ArcSwap::from_pointee(ring),
            schedule,
            source: Mutex::new(source),
        })
    }

    /// A lock-free snapshot for the hot path.
    pub fn load(&self) -> Guard<Arc<KeyRing>> {
        self.ring.load()
    }

    /// A snapshot that may be held across calls.
    pub fn snapshot(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// Moves the ring to the epoch containing `now`. Returns whether it
    /// changed. A clock stepping backwards never moves the ring back.
    pub fn rotate(&self, now: u64) -> Result<bool, KeyError> {
        let epoch = self.schedule.epoch(now);
        let mut source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.ring.load_full();
        if epoch <= old.current {
            return Ok(false);
        }
        let ring = build_ring(&self.schedule, &old, source.as_mut(), epoch)?;
        self.ring.store(Arc::new(ring));
        Ok(true)
    }

    /// Seconds from `now` until the next epoch starts.
    pub fn seconds_until_rotation(&self, now: u64) -> u64 {
        let i = self.schedule.interval;
        i - now % i
    }
}

/// Keys for epochs `epoch - keep ..= epoch + 1`, reusing those `old` holds.
fn build_ring(
    schedule: &Schedule,
    old: &KeyRing,
    source: &mut dyn KeySource,
    epoch: u32,
) -> Result<KeyRing, KeyError> {
    let first = epoch.saturating_sub(schedule.keep);
    let last = epoch.saturating_add(1);
    let mut entries = Vec::with_capacity((last - first) as usize + 1);
    for id in first..=last {
        let key = match old.get(id) {
            Some(e) => e.key.clone(),
            None => source.key_for(id)?,
        };
        entries.push(KeyEntry {
            id,
            starts: u64::from(id) * schedule.interval,
            key,
        });
    }
    Ok(KeyRing {
        current: epoch,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_proto::cookie::{open_cookie, seal_cookie, MAX_COOKIE_LEN};
    use nts_proto::{AeadAlgorithm, AeadKey, SessionKeys};

    fn keys(interval: u64, keep: u32, now: u64) -> RotatingKeys {
        RotatingKeys::new(
            Schedule { interval, keep },
            Box::<RandomKeys>::default(),
            now,
        )
        .unwrap()
    }

    fn cookie_from(ring: &KeyRing) -> Vec<u8> {
        let alg = AeadAlgorithm::AesSivCmac256;
        let s = SessionKeys {
            c2s: AeadKey::new(alg, &[1; 32]).unwrap(),
            s2c: AeadKey::new(alg, &[2; 32]).unwrap(),
        };
        let (id, key) = ring.sealing_key();
        let mut out = vec![0u8; 100];
        seal_cookie(id, key, &[0; 16], &s, &mut out).unwrap();
        out
    }

    fn opens(ring: &KeyRing, cookie: &[u8]) -> bool {
        open_cookie(ring, cookie, &mut [0u8; MAX_COOKIE_LEN]).is_ok()
    }

    #[test]
    fn ring_holds_previous_current_and_next() {
        let k = keys(100, 2, 1_000);
        let ring = k.load();
        assert_eq!(ring.current_id(), 10);
        let ids: Vec<u32> = ring.entries().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![8, 9, 10, 11]);
        assert_eq!(ring.entries()[2].starts, 1_000);
    }

    #[test]
    fn rotation_follows_now_without_sleeping() {
        let k = keys(100, 2, 1_000);
        let cookie = cookie_from(&k.load());
        assert!(!k.rotate(1_099).unwrap());
        assert!(k.rotate(1_100).unwrap());
        assert_eq!(k.load().current_id(), 11);
        // Sealed in epoch 10, now epoch 12, keep = 2: still opens.
        assert!(k.rotate(1_200).unwrap());
        assert!(opens(&k.load(), &cookie));
        assert!(k.rotate(1_201).is_ok_and(|changed| !changed));
        // Epoch 13 is more than `keep` intervals later: refused.
        assert!(k.rotate(1_300).unwrap());
        assert!(!opens(&k.load(), &cookie));
    }

    #[test]
    fn the_next_key_is_kept_across_rotation() {
        let k = keys(10, 1, 0);
        let next = k.load().entries().last().unwrap().key.clone();
        k.rotate(10).unwrap();
        assert_eq!(k.load().sealing_key().1, &next);
    }

    #[test]
    fn clock_stepping_back_keeps_the_ring() {
        let k = keys(10, 1, 100);
        assert!(!k.rotate(50).unwrap());
        assert_eq!(k.load().current_id(), 10);
        assert_eq!(k.seconds_until_rotation(105), 5);
    }

    #[test]
    fn zero_interval_is_refused() {
        let r = RotatingKeys::new(
            Schedule {
                interval: 0,
                keep: 1,
            },
            Box::<RandomKeys>::default(),
            0,
        );
        assert!(matches!(r, Err(KeyError::ZeroInterval)));
    }
}
