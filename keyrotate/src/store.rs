//! The key file in the dump directory.
//!
//! ```text
//! "NTSDKEYS" | version u16 = 1 | interval u64 | current u32 | count u16
//! count x ( id u32 | starts u64 | n u8 | n x key[32] )
//! SHA-256 of everything above (32 bytes)
//! ```
//!
//! Writes go to a temporary file (mode 0600) that is fsynced, renamed over
//! the old file, and then the directory is fsynced, so a crash at any point
//! leaves either the old or the new file, never a torn one. A file that does
//! not decode is moved aside, never overwritten.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nts_proto::reader::Reader;
use nts_proto::MasterKey;
use ring::digest;

use crate::ring::{KeyEntry, KeyRing};
use crate::KeyError;

pub const FILE_NAME: &str = "keys";
const TMP_NAME: &str = "keys.tmp";
const MAGIC: &[u8; 8] = b"NTSDKEYS";
const VERSION: u16 = 1;
const CHECKSUM_LEN: usize = 32;

/// Why a key file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not an ntsd key file")]
    BadMagic,
    #[error("unsupported key file version {0}")]
    UnknownVersion(u16),
    #[error("checksum mismatch (file damaged)")]
    BadChecksum,
    #[error("file truncated or malformed")]
    Malformed,
}

/// The decoded contents of a key file.
#[derive(Debug, Clone)]
pub struct Stored {
    pub interval: u64,
    pub current: u32,
    pub entries: Vec<KeyEntry>,
}

pub fn encode(interval: u64, ring: &KeyRing) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + ring.entries().len() * 48);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&interval.to_be_bytes());
    out.extend_from_slice(&ring.current_id().to_be_bytes());
    let count = u16::try_from(ring.entries().len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for e in ring.entries().iter().take(usize::from(count)) {
        out.extend_from_slice(&e.id.to_be_bytes());
        out.extend_from_slice(&e.starts.to_be_bytes());
        let n = u8::try_from(e.keys.len()).unwrap_or(u8::MAX);
        out.push(n);
        for k in e.keys.iter().take(usize::from(n)) {
            out.extend_from_slice(k.as_bytes());
        }
    }
    let sum = digest::digest(&digest::SHA256, &out);
    out.extend_from_slice(sum.as_ref());
    out
}

pub fn decode(bytes: &[u8]) -> Result<Stored, FormatError> {
    let body_len = bytes
        .len()
        .checked_sub(CHECKSUM_LEN)
        .ok_or(FormatError::Malformed)?;
    let (body, sum) = bytes.split_at(body_len);
    let mut r = Reader::new(body);
    if r.take(MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(FormatError::BadMagic);
    }
    let version = r.u16().ok_or(FormatError::Malformed)?;
    if version != VERSION {
        return Err(FormatError::UnknownVersion(version));
    }
    if digest::digest(&digest::SHA256, body).as_ref() != sum {
        return Err(FormatError::BadChecksum);
    }
    let interval = r.u64().ok_or(FormatError::Malformed)?;
    let current = r.u32().ok_or(FormatError::Malformed)?;
    let count = r.u16().ok_or(FormatError::Malformed)?;
    let mut entries = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let id = r.u32().ok_or(FormatError::Malformed)?;
        let starts = r.u64().ok_or(FormatError::Malformed)?;
        let n = r.u8().ok_or(FormatError::Malformed)?;
        let mut keys = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let k: [u8; MasterKey::LEN] = r.array().ok_or(FormatError::Malformed)?;
            keys.push(MasterKey::from_bytes(&k));
        }
        if keys.is_empty() {
            return Err(FormatError::Malformed);
        }
        entries.push(KeyEntry { id, starts, keys });
    }
    if !r.is_empty() || interval == 0 || !entries.iter().any(|e| e.id == current) {
        return Err(FormatError::Malformed);
    }
    Ok(Stored {
        interval,
        current,
        entries,
    })
}

/// What opening the store found, for the caller to log.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub stored: Option<Stored>,
    /// Things an operator should fix (permissions).
    pub warnings: Vec<String>,
    /// A damaged file, where it was moved, and why.
    pub corrupt: Option<(PathBuf, FormatError)>,
}

/// The dump directory holding the key file.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Creates the directory (mode 0700) if needed, tightens a directory
    /// that others can read, and loads the key file. A file that does not
    /// decode is renamed to `keys.corrupt-<unix time>`.
    pub fn open(dir: &Path, now: u64) -> Result<(Self, LoadReport), KeyError> {
        let io = |e: std::io::Error| KeyError::Store {
            path: dir.to_owned(),
            error: e.to_string(),
        };
        let mut report = LoadReport::default();
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            report.warnings.push(format!(
                "dump directory {} had mode {:04o}; changed to 0700",
                dir.display(),
                mode & 0o7777
            ));
        }
        let store = Self {
            dir: dir.to_owned(),
        };
        let path = store.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((store, report)),
            Err(e) => {
                return Err(KeyError::Store {
                    path,
                    error: e.to_string(),
                })
            }
        };
        let fmode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
        if fmode & 0o077 != 0 {
            report.warnings.push(format!(
                "key file {} has mode {:04o}: group or others can read the master keys; it is rewritten with 0600",
                path.display(),
                fmode & 0o7777
            ));
        }
        match decode(&bytes) {
            Ok(stored) => report.stored = Some(stored),
            Err(reason) => {
                let aside = dir.join(format!("{FILE_NAME}.corrupt-{now}"));
                std::fs::rename(&path, &aside).map_err(|e| KeyError::Store {
                    path: path.clone(),
                    error: format!("cannot move the damaged key file aside: {e}"),
                })?;
                report.corrupt = Some((aside, reason));
            }
        }
        Ok((store, report))
    }

    /// Reads and decodes the key file without changing anything (for
    /// `ntsd keys list`). `Ok(None)` when there is no file.
    pub fn read(dir: &Path) -> Result<Option<Stored>, KeyError> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(b) => decode(&b).map(Some).map_err(|e| KeyError::Store {
                path,
                error: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KeyError::Store {
                path,
                error: e.to_string(),
            }),
        }
    }

    /// Writes the ring atomically: temp file (0600), fsync, rename, fsync dir.
    pub fn save(&self, interval: u64, ring: &KeyRing) -> Result<(), KeyError> {
        let err = |e: std::io::Error| KeyError::Store {
            path: self.path(),
            error: e.to_string(),
        };
        let tmp = self.dir.join(TMP_NAME);
        let bytes = encode(interval, ring);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        // A temp file left by a crash may have other permissions.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, self.path()).map_err(err)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        let e = |id: u32, keys: &[u8]| KeyEntry {
            id,
            starts: u64::from(id) * 60,
            keys: keys
                .iter()
                .map(|&b| MasterKey::from_bytes(&[b; 32]))
                .collect(),
        };
        KeyRing::new(11, vec![e(10, &[1]), e(11, &[2, 3]), e(12, &[4])]).unwrap()
    }

    #[test]
    fn round_trip() {
        let bytes = encode(60, &ring());
        let s = decode(&bytes).unwrap();
        assert_eq!((s.interval, s.current), (60, 11));
        assert_eq!(s.entries.len(), 3);
        assert_eq!(s.entries[1].keys.len(), 2);
        assert_eq!(s.entries[1].keys[1].as_bytes(), &[3u8; 32]);
        assert_eq!(s.entries[2].starts, 720);
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = encode(60, &ring());
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b).is_err(), "flip of bit {i} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(60, &ring());
        for n in 0..bytes.len() {
            assert!(
                decode(&bytes[..n]).is_err(),
                "truncation to {n} bytes went unnoticed"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = encode(60, &ring());
        bytes[9] = 2;
        assert_eq!(decode(&bytes).unwrap_err(), FormatError::UnknownVersion(2));
    }

    #[test]
    fn save_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("state");
        let (store, report) = KeyStore::open(&d, 1).unwrap();
        assert!(report.stored.is_none() && report.corrupt.is_none());
        store.save(60, &ring()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&store.path()), 0o600);
        assert!(!d.join(TMP_NAME).exists());
        let (_, report) = KeyStore::open(&d, 2).unwrap();
        assert_eq!(report.stored.unwrap().current, 11);
    }

    #[test]
    fn corrupt_file_is_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"garbage").unwrap();
        let (_, report) = KeyStore::open(dir.path(), 1234).unwrap();
        let (aside, reason) = report.corrupt.unwrap();
        assert_eq!(aside, dir.path().join("keys.corrupt-1234"));
        assert_eq!(reason, FormatError::Malformed);
        assert_eq!(std::fs::read(aside).unwrap(), b"garbage");
        assert!(!path.exists());
    }

    #[test]
    fn loose_permissions_are_reported_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, encode(60, &ring())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (store, report) = KeyStore::open(dir.path(), 1).unwrap();
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
        store.save(60, &ring()).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn unwritable_dir_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"").unwrap();
        let e = KeyStore::open(&file.join("sub"), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain-file/sub"), "{e}");
    }
}
