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
}

/// Previous keys, the current key and the next key, ascending by id.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: u32,
    entries: Vec<KeyEntry>,
}

impl KeyRing {
    /// `None` unless `entries` contains `current` and no entry is empty.
    pub fn new(current: u32, entries: Vec<KeyEntry>) -> Option<Self> {
        let ok =
            entries.iter().all(|e| !e.keys.is_empty()) && entries.iter().any(|e| e.id == current);
        ok.then_some(Self { current, entries })
    }

    pub fn current_id(&self) -> u32 {
        self.current
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    pub fn get(&self, id: u32) -> Option<&KeyEntry> {
        // A handful of entries: a linear scan beats anything fancier.
        self.entries.iter().find(|e| e.id == id)
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
