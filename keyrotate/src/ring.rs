//! An immutable snapshot of the accepted master keys.

use nts_proto::{CookieKeys, MasterKey};

/// The keys of one epoch and when the epoch starts.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The epoch, which is also the key id carried in cookies.
    pub id: u32,
    /// Unix time at which the epoch begins.
    pub starts: u64,
    /// Never empty. The first key seals while this epoch is current; all of
    /// them open. A second key appears after a forced rotation (the replaced
    /// key keeps opening) or while a fleet secret is rolled.
    pub keys: Vec<MasterKey>,
    /// Set on a key kept after a clock step: it still opens while the
    /// current epoch is at most this, even outside the normal window
    /// (`current - keep ..= current + 1`). `None` for a key that lives by
    /// the window alone.
    pub open_until: Option<u32>,
}

/// Previous keys, the current key and the next key, ascending by id, plus
/// any keys kept after a clock step (see [`KeyEntry::open_until`]).
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: u32,
    entries: Vec<KeyEntry>,
}

impl KeyRing {
    /// `None` unless `entries` contains `current`, no entry is empty and no
    /// id appears twice. Entries are sorted by id.
    pub fn new(current: u32, mut entries: Vec<KeyEntry>) -> Option<Self> {
        entries.sort_by_key(|e| e.id);
        let ok = entries.iter().all(|e| !e.keys.is_empty())
            && entries
                .windows(2)
                .all(|w| matches!(w, [a, b] if a.id < b.id))
            && entries.iter().any(|e| e.id == current);
        ok.then_some(Self { current, entries })
    }

    pub fn current_id(&self) -> u32 {
        self.current
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    pub fn get(&self, id: u32) -> Option<&KeyEntry> {
        // Sorted by id; `keep` may be up to a thousand.
        let i = self.entries.binary_search_by_key(&id, |e| e.id).ok()?;
        self.entries.get(i)
    }
}

impl CookieKeys for KeyRing {
    fn sealing_key(&self) -> (u32, &MasterKey) {
        match self.get(self.current).and_then(|e| e.keys.first()) {
            Some(k) => (self.current, k),
            None => unreachable!("KeyRing::new guarantees the current key"),
        }
    }

    fn opening_keys(&self, id: u32) -> &[MasterKey] {
        self.get(id).map_or(&[], |e| e.keys.as_slice())
    }
}
