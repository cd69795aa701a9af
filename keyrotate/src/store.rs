//! The key file in the dump directory.
//!
//! ```text
//! "NTSDKEYS" | version u16 | interval u64 | current u32 | count u16
//! count x ( id u32 | starts u64 | [v2: kept u8 | open_until u32] | n u8 | n x key[32] )
//! SHA-256 of everything above (32 bytes)
//! ```
//!
//! Version 2 adds, per entry, the epoch until which a key kept after a
//! clock step still opens. It is written only while such a key exists, so
//! the file stays readable by earlier releases otherwise. Every version
//! keeps the envelope (magic, version, trailing SHA-256 of everything before
//! it), so a release can tell a newer file (checksum good, version higher:
//! refused and left alone) from a damaged one (moved aside).
//!
//! Writes go to a temporary file (mode 0600) that is fsynced, renamed over
//! the old file, and then the directory is fsynced, so a crash at any point
//! leaves either the old or the new file, never a torn one. A file that does
//! not decode (bad checksum, truncated) is moved aside, never overwritten; a
//! file of a newer version is left as it is and refused. The directory is
//! locked (`flock`) while a store is open, so one process at a time owns
//! it. Every buffer that holds key bytes is wiped when dropped.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nts_proto::reader::Reader;
use nts_proto::MasterKey;
use ring::digest;
use zeroize::Zeroizing;

use crate::ring::{KeyEntry, KeyRing};
use crate::KeyError;

pub const FILE_NAME: &str = "keys";
const TMP_NAME: &str = "keys.tmp";
const MAGIC: &[u8; 8] = b"NTSDKEYS";
const VERSION: u16 = 1;
const VERSION_KEPT: u16 = 2;
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

/// The file's bytes; wiped when dropped.
pub fn encode(interval: u64, ring: &KeyRing) -> Zeroizing<Vec<u8>> {
    let version = match ring.entries().iter().any(|e| e.open_until.is_some()) {
        true => VERSION_KEPT,
        false => VERSION,
    };
    let keys: usize = ring.entries().iter().map(|e| e.keys.len()).sum();
    let len = 64 + ring.entries().len() * 20 + keys * MasterKey::LEN;
    // Sized up front so the buffer never reallocates (which would leave an
    // unwiped copy of the keys behind).
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&interval.to_be_bytes());
    out.extend_from_slice(&ring.current_id().to_be_bytes());
    // Bounded by MAX_KEEP and MAX_KEYS_PER_EPOCH far below these limits.
    let count = u16::try_from(ring.entries().len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for e in ring.entries().iter().take(usize::from(count)) {
        out.extend_from_slice(&e.id.to_be_bytes());
        out.extend_from_slice(&e.starts.to_be_bytes());
        if version == VERSION_KEPT {
            out.push(u8::from(e.open_until.is_some()));
            out.extend_from_slice(&e.open_until.unwrap_or(0).to_be_bytes());
        }
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
    // The checksum first: a version field that a bit flip changed is
    // damage, not a file from another release.
    if digest::digest(&digest::SHA256, body).as_ref() != sum {
        return Err(FormatError::BadChecksum);
    }
    if version != VERSION && version != VERSION_KEPT {
        return Err(FormatError::UnknownVersion(version));
    }
    let interval = r.u64().ok_or(FormatError::Malformed)?;
    let current = r.u32().ok_or(FormatError::Malformed)?;
    let count = r.u16().ok_or(FormatError::Malformed)?;
    let mut entries = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let id = r.u32().ok_or(FormatError::Malformed)?;
        let starts = r.u64().ok_or(FormatError::Malformed)?;
        let open_until = match version {
            VERSION_KEPT => {
                let kept = r.u8().ok_or(FormatError::Malformed)?;
                let until = r.u32().ok_or(FormatError::Malformed)?;
                match kept {
                    0 => None,
                    1 => Some(until),
                    _ => return Err(FormatError::Malformed),
                }
            }
            _ => None,
        };
        let n = r.u8().ok_or(FormatError::Malformed)?;
        let mut keys = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let k: Zeroizing<[u8; MasterKey::LEN]> =
                Zeroizing::new(r.array().ok_or(FormatError::Malformed)?);
            keys.push(MasterKey::from_bytes(&k));
        }
        if keys.is_empty() {
            return Err(FormatError::Malformed);
        }
        entries.push(KeyEntry {
            id,
            starts,
            keys,
            open_until,
        });
    }
    let sorted = entries
        .windows(2)
        .all(|w| matches!(w, [a, b] if a.id < b.id));
    if !r.is_empty() || !sorted || interval == 0 || !entries.iter().any(|e| e.id == current) {
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
///
/// Saves go through a descriptor of the directory opened with the store
/// (`openat`, `renameat`), so a server that drops its privileges keeps
/// saving even where its new user could not walk the path to it.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
    /// The user and group the files belong to when ntsd starts as root and
    /// then drops to another user (`[server] user`); `None`: whoever runs.
    owner: Option<(u32, u32)>,
}

fn read_file(path: &Path) -> Result<Option<Stored>, KeyError> {
    match std::fs::read(path) {
        Ok(b) => decode(&Zeroizing::new(b))
            .map(Some)
            .map_err(|e| KeyError::Store {
                path: path.to_owned(),
                error: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KeyError::Store {
            path: path.to_owned(),
            error: e.to_string(),
        }),
    }
}

/// Whether an existing dump directory may hold keys for a server running
/// as `owner` (else the process's user): a directory, owned by that user,
/// that group and others cannot write. Returns warnings (others can list
/// it) or the refusal.
fn check_dir(
    dir: &Path,
    meta: &std::fs::Metadata,
    owner: Option<(u32, u32)>,
) -> Result<Vec<String>, KeyError> {
    let refuse = |error: String| KeyError::Store {
        path: dir.to_owned(),
        error,
    };
    if !meta.is_dir() {
        return Err(refuse("exists and is not a directory".into()));
    }
    let uid = owner.map_or_else(|| rustix::process::geteuid().as_raw(), |(u, _)| u);
    if meta.uid() != uid {
        return Err(KeyError::NotOwner {
            path: dir.to_owned(),
            found: meta.uid(),
            uid,
        });
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "has mode {:04o}: group or others can write it, so they could replace the key file; give ntsd a directory of its own (e.g. /var/lib/ntsd), or remove their write access (chmod go-w)",
            mode & 0o7777
        )));
    }
    let mut warnings = Vec::new();
    if mode & 0o055 != 0 {
        warnings.push(format!(
            "dump directory {} has mode {:04o}: group or others can list it (the key file itself is 0600); chmod 0700 to hide it",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(warnings)
}

/// What `ntsd run` would find in a dump directory, read without changing
/// or locking anything (for `ntsd check-config`).
#[derive(Debug)]
pub struct Inspection {
    /// Things an operator should fix that do not stop a start.
    pub warnings: Vec<String>,
    /// The key file, if there is one: decoded, or why not.
    pub file: Option<Result<Stored, FormatError>>,
}

/// Checks `dir` as [`KeyStore::open_for`] would for `owner`, and reads the
/// key file, changing nothing. A directory `run` would refuse is an error.
pub fn inspect(dir: &Path, owner: Option<(u32, u32)>) -> Result<Inspection, KeyError> {
    let io = |e: std::io::Error| KeyError::Store {
        path: dir.to_owned(),
        error: e.to_string(),
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Inspection {
                warnings: Vec::new(),
                file: None,
            })
        }
        Err(e) => return Err(io(e)),
    };
    let warnings = check_dir(dir, &meta, owner)?;
    let path = dir.join(FILE_NAME);
    let file = match std::fs::read(&path) {
        Ok(b) => Some(decode(&Zeroizing::new(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(KeyError::Store {
                path,
                error: e.to_string(),
            })
        }
    };
    Ok(Inspection { warnings, file })
}

/// Whether a key file of this version was written by a newer release (and
/// must be left alone rather than moved aside as damaged).
pub fn is_newer(e: &FormatError) -> bool {
    matches!(e, FormatError::UnknownVersion(v) if *v > VERSION_KEPT)
}

impl KeyStore {
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// [`KeyStore::open_for`] for the user the process runs as now.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path, now: u64) -> Result<(Self, LoadReport), KeyError> {
        Self::open_for(dir, now, None)
    }

    /// Creates the directory (mode 0700) if it is missing and loads the key
    /// file. An existing directory is used as it is, never chmodded: one
    /// that group or others can write, or that another user owns, is refused
    /// (a typo such as `/tmp` or `/var/lib` must not end up holding keys, or
    /// lose its own mode). A file that does not decode is renamed to
    /// `keys.corrupt-<unix time>`.
    ///
    /// `owner` (uid, gid) is the user the process will run as once it drops
    /// its privileges: the directory must belong to that user, one created
    /// here is given to it, and so is every file written.
    pub fn open_for(
        dir: &Path,
        now: u64,
        owner: Option<(u32, u32)>,
    ) -> Result<(Self, LoadReport), KeyError> {
        let io = |e: std::io::Error| KeyError::Store {
            path: dir.to_owned(),
            error: e.to_string(),
        };
        let mut report = LoadReport::default();
        let meta = match std::fs::metadata(dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io)?;
                }
                std::fs::metadata(dir).map_err(io)?
            }
            Err(e) => return Err(io(e)),
        };
        report.warnings = check_dir(dir, &meta, owner)?;
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(e.into()))?;
        // One process per key directory, for the life of the descriptor
        // (the store's clones share it): two servers rotating one file would
        // each overwrite the other's keys. Taken before anything is read or
        // moved, so a refused start changes nothing.
        match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(KeyError::InUse {
                    path: dir.to_owned(),
                })
            }
            Err(e) => return Err(io(e.into())),
        }
        let store = Self {
            dir: dir.to_owned(),
            fd: std::sync::Arc::new(fd),
            owner,
        };
        let path = store.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => Zeroizing::new(b),
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
            // Keys this release cannot read are not damaged: a newer release
            // wrote them (a rollback). Moving them aside would throw away
            // every client's cookies; stop instead and leave the file as is.
            Err(e) if is_newer(&e) => {
                return Err(KeyError::Store {
                    path,
                    error: format!(
                        "written by a newer ntsd ({e}; this release reads versions {VERSION} and {VERSION_KEPT}); left untouched. Run the release that wrote it, or move the file away to start with new keys (clients then run NTS-KE again)"
                    ),
                });
            }
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

    /// Where the keys of another `rotate_interval` are kept aside.
    pub fn aside_path(&self, interval: u64) -> PathBuf {
        self.dir.join(format!("{FILE_NAME}.interval-{interval}s"))
    }

    /// Moves the key file, written with `interval`, to
    /// [`KeyStore::aside_path`], so that going back to that interval
    /// restores its keys ([`KeyStore::take_aside`]).
    pub fn set_aside(&self, interval: u64) -> Result<PathBuf, KeyError> {
        let aside = self.aside_path(interval);
        std::fs::rename(self.path(), &aside)
            .and_then(|()| File::open(&self.dir).and_then(|d| d.sync_all()))
            .map_err(|e| KeyError::Store {
                path: self.path(),
                error: format!("cannot keep the key file aside as {}: {e}", aside.display()),
            })?;
        Ok(aside)
    }

    /// The keys kept aside for `interval`, if any. The file stays until
    /// [`KeyStore::remove_aside`], called once the keys are saved as the
    /// key file again.
    pub fn take_aside(&self, interval: u64) -> Result<Option<Stored>, KeyError> {
        read_file(&self.aside_path(interval))
    }

    pub fn remove_aside(&self, interval: u64) -> Result<(), KeyError> {
        let path = self.aside_path(interval);
        std::fs::remove_file(&path).map_err(|e| KeyError::Store {
            path,
            error: e.to_string(),
        })
    }

    /// Reads and decodes the key file without changing anything (for
    /// `ntsd keys list`). `Ok(None)` when there is no file.
    pub fn read(dir: &Path) -> Result<Option<Stored>, KeyError> {
        read_file(&dir.join(FILE_NAME))
    }

    /// Writes the ring atomically: temp file (0600), fsync, rename, fsync
    /// dir, all relative to the directory's descriptor.
    pub fn save(&self, interval: u64, ring: &KeyRing) -> Result<(), KeyError> {
        use rustix::fs::{Mode, OFlags};
        let err = |e: std::io::Error| KeyError::Store {
            path: self.path(),
            error: e.to_string(),
        };
        let bytes = encode(interval, ring);
        let fd = rustix::fs::openat(
            &*self.fd,
            TMP_NAME,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| err(e.into()))?;
        // A temp file left by a crash may have other permissions.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(|e| err(e.into()))?;
        if let Some((uid, gid)) = self.owner {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| err(e.into()))?;
        }
        let mut f = File::from(fd);
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        rustix::fs::renameat(&*self.fd, TMP_NAME, &*self.fd, FILE_NAME)
            .map_err(|e| err(e.into()))?;
        rustix::fs::fsync(&*self.fd).map_err(|e| err(e.into()))?;
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
            open_until: None,
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

    /// A key file from a newer release (a rollback) stops the start and
    /// stays byte for byte as it was: nothing moved aside, nothing written.
    #[test]
    fn a_newer_key_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = with_version(&encode(60, &ring()), 3);
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, &bytes).unwrap();
        let e = KeyStore::open(dir.path(), 1234).unwrap_err().to_string();
        assert!(e.contains("newer ntsd") && e.contains("version 3"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
        // Version 0 never existed: that file is damaged, and moved aside.
        std::fs::write(&path, with_version(&bytes, 0)).unwrap();
        let (_, report) = KeyStore::open(dir.path(), 1234).unwrap();
        assert_eq!(report.corrupt.unwrap().1, FormatError::UnknownVersion(0));
    }

    /// One store per directory at a time, across processes and within
    /// one: a second open is refused naming the directory, and works once
    /// the first is dropped.
    #[test]
    fn a_directory_in_use_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = KeyStore::open(dir.path(), 1).unwrap();
        first.save(60, &ring()).unwrap();
        let before = std::fs::read(first.path()).unwrap();
        let clone = first.clone();
        drop(first);
        let e = KeyStore::open(dir.path(), 2).unwrap_err();
        assert!(matches!(e, KeyError::InUse { .. }), "{e}");
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
        assert_eq!(std::fs::read(clone.path()).unwrap(), before);
        drop(clone);
        KeyStore::open(dir.path(), 3).unwrap();
    }

    /// `bytes` with its version field set to `v` and the checksum made
    /// good again, as a release writing version `v` would have it.
    pub(crate) fn with_version(bytes: &[u8], v: u16) -> Vec<u8> {
        let mut body = bytes[..bytes.len() - CHECKSUM_LEN].to_vec();
        body[8..10].copy_from_slice(&v.to_be_bytes());
        let sum = digest::digest(&digest::SHA256, &body);
        body.extend_from_slice(sum.as_ref());
        body
    }

    #[test]
    fn unknown_version_is_named() {
        let bytes = with_version(&encode(60, &ring()), 3);
        assert_eq!(decode(&bytes).unwrap_err(), FormatError::UnknownVersion(3));
        // The same version change without its checksum is damage.
        let mut flipped = encode(60, &ring()).to_vec();
        flipped[9] = 3;
        assert_eq!(decode(&flipped).unwrap_err(), FormatError::BadChecksum);
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
        drop(store);
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
    fn a_readable_dir_is_reported_never_chmodded_and_a_readable_file_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, encode(60, &ring())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (store, report) = KeyStore::open(dir.path(), 1).unwrap();
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
        store.save(60, &ring()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(dir.path()), 0o755, "the directory's mode was changed");
    }

    /// What `/tmp` looks like: world-writable with the sticky bit.
    #[test]
    fn a_dir_others_can_write_is_refused_and_left_unchanged() {
        for m in [0o1777, 0o777, 0o720, 0o702] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(m)).unwrap();
            let e = KeyStore::open(dir.path(), 1).unwrap_err().to_string();
            assert!(e.contains(&dir.path().display().to_string()), "{e}");
            assert!(
                e.contains("can write it") && e.contains("chmod go-w"),
                "{e}"
            );
            let after = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o7777;
            assert_eq!(after, m, "mode changed");
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                0,
                "wrote into it"
            );
        }
    }

    #[test]
    fn a_dir_of_another_user_is_refused_and_left_unchanged() {
        // Only root can give a directory away; CI runs as root.
        if !testkit::require("root (to chown)", testkit::is_root()) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = KeyStore::open(dir.path(), 1).unwrap_err().to_string();
        assert!(
            e.contains("owned by uid 65534") && e.contains("chown"),
            "{e}"
        );
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(
            (meta.uid(), meta.permissions().mode() & 0o7777),
            (65534, 0o700)
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_dir_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        KeyStore::open(&d, 1).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn kept_keys_round_trip_in_version_2_and_plain_rings_stay_version_1() {
        assert_eq!(&encode(60, &ring())[8..10], &[0, 1]);
        let mut entries = ring().entries().to_vec();
        entries.push(KeyEntry {
            id: 40,
            starts: 2400,
            keys: vec![MasterKey::from_bytes(&[9; 32])],
            open_until: Some(13),
        });
        let kept = KeyRing::new(11, entries).unwrap();
        let bytes = encode(60, &kept);
        assert_eq!(&bytes[8..10], &[0, 2]);
        let s = decode(&bytes).unwrap();
        let until: Vec<_> = s.entries.iter().map(|e| e.open_until).collect();
        assert_eq!(until, vec![None, None, None, Some(13)]);
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b).is_err(), "flip of bit {i} went unnoticed");
        }
    }

    #[test]
    fn keys_of_another_interval_are_kept_aside_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = KeyStore::open(dir.path(), 1).unwrap();
        store.save(60, &ring()).unwrap();
        let aside = store.set_aside(60).unwrap();
        assert_eq!(aside, dir.path().join("keys.interval-60s"));
        assert!(!store.path().exists());
        assert!(store.take_aside(30).unwrap().is_none());
        let back = store.take_aside(60).unwrap().unwrap();
        assert_eq!((back.interval, back.current), (60, 11));
        store.remove_aside(60).unwrap();
        assert!(!aside.exists());
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
