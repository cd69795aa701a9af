//! Where keys come from: the system CSPRNG (standalone) or HKDF over a
//! shared secret (fleet).

use std::path::{Path, PathBuf};

use nts_proto::MasterKey;
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::KeyError;

/// Supplies keys for epochs the ring does not hold yet.
pub trait KeySource: Send {
    /// The keys of `epoch`: the first seals, all open.
    fn keys_for(&mut self, epoch: u32) -> Result<Vec<MasterKey>, KeyError>;

    /// A new, never used sealing key for `epoch` (forced rotation).
    fn fresh_key(&mut self, epoch: u32) -> Result<MasterKey, KeyError>;

    /// Whether keys are derived rather than stored (nothing to persist).
    fn is_derived(&self) -> bool {
        false
    }
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

impl RandomKeys {
    fn random(&self) -> Result<MasterKey, KeyError> {
        let mut bytes = Zeroizing::new([0u8; MasterKey::LEN]);
        self.rng
            .fill(bytes.as_mut_slice())
            .map_err(|_| KeyError::Random)?;
        Ok(MasterKey::from_bytes(&bytes))
    }
}

impl KeySource for RandomKeys {
    fn keys_for(&mut self, _epoch: u32) -> Result<Vec<MasterKey>, KeyError> {
        Ok(vec![self.random()?])
    }

    fn fresh_key(&mut self, _epoch: u32) -> Result<MasterKey, KeyError> {
        self.random()
    }
}

/// Shortest fleet secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
const HKDF_SALT: &[u8] = b"ntsd fleet master key v1";
const HKDF_LABEL: &[u8] = b"ntsd cookie key";

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        MasterKey::LEN
    }
}

/// Keys derived from shared secrets: the key of epoch `e` is
/// HKDF-SHA256(secret, info = "ntsd cookie key" || e as u32 BE). Every node
/// with the same secret derives the same ring with no coordination.
///
/// The secrets are held as bytes that are wiped on drop, and each
/// derivation extracts afresh: `ring`'s HKDF and HMAC state is not wiped by
/// `ring`, so it lives only on the stack for the length of one derivation
/// (a rotation, not a packet) instead of for the life of the process.
pub struct FleetKeys {
    /// The sealing secret first, then secrets whose keys only open.
    secrets: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for FleetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetKeys")
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

impl FleetKeys {
    /// From raw secrets (the sealing one first).
    pub fn from_secrets(secrets: &[&[u8]]) -> Result<Self, KeyError> {
        let owned = secrets.iter().map(|s| Zeroizing::new(s.to_vec())).collect();
        Self::from_owned(owned)
    }

    fn from_owned(secrets: Vec<Zeroizing<Vec<u8>>>) -> Result<Self, KeyError> {
        if secrets.is_empty() {
            return Err(KeyError::FleetSecret {
                path: PathBuf::new(),
                reason: "no secret".into(),
            });
        }
        Ok(Self { secrets })
    }

    /// Reads the sealing secret and the open-only secrets from files, which
    /// must hold at least 32 bytes and be readable by their owner only, or
    /// also by their group when that group is `own_group`, the group the
    /// server runs as ([`check_secret_mode`]).
    pub fn from_files(
        primary: &Path,
        accept: &[PathBuf],
        own_group: u32,
    ) -> Result<Self, KeyError> {
        let mut raw = Vec::new();
        for path in std::iter::once(primary).chain(accept.iter().map(PathBuf::as_path)) {
            raw.push(read_secret(path, own_group)?);
        }
        Self::from_owned(raw)
    }

    fn derive(secret: &[u8], epoch: u32) -> Result<MasterKey, KeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        let e = epoch.to_be_bytes();
        let info = [HKDF_LABEL, e.as_slice()];
        let okm = prk.expand(&info, KeyLen).map_err(|_| KeyError::Random)?;
        let mut bytes = Zeroizing::new([0u8; MasterKey::LEN]);
        okm.fill(bytes.as_mut_slice())
            .map_err(|_| KeyError::Random)?;
        Ok(MasterKey::from_bytes(&bytes))
    }
}

impl KeySource for FleetKeys {
    fn keys_for(&mut self, epoch: u32) -> Result<Vec<MasterKey>, KeyError> {
        self.secrets
            .iter()
            .map(|s| Self::derive(s, epoch))
            .collect()
    }

    fn fresh_key(&mut self, _epoch: u32) -> Result<MasterKey, KeyError> {
        Err(KeyError::DerivedKeys)
    }

    fn is_derived(&self) -> bool {
        true
    }
}

/// Whether a fleet secret file's mode and group keep it to the server: no
/// one but its owner may read it, except its group when that group is
/// `own_group`, the one the server runs as. That is what a Kubernetes
/// kubelet writes for a Secret volume under a pod's `fsGroup` (mode 0440,
/// group fsGroup, whatever `defaultMode` says: kubernetes#57923), and a
/// group of the server's own holds no one else. Write access for group or
/// others is never accepted.
pub fn check_secret_mode(path: &Path, own_group: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let err = |reason: String| KeyError::FleetSecret {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o7777;
    let group_read_ok = meta.gid() == own_group;
    let refused = match group_read_ok {
        true => mode & 0o037 != 0,
        false => mode & 0o077 != 0,
    };
    if refused {
        return Err(err(format!(
            "mode {mode:04o} (group {}) lets others than ntsd read or change it; chmod 0400 or 0600, or 0440 with the file's group the one ntsd runs as (gid {own_group}, as a Kubernetes fsGroup gives)",
            meta.gid()
        )));
    }
    Ok(())
}

fn read_secret(path: &Path, own_group: u32) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let err = |reason: String| KeyError::FleetSecret {
        path: path.to_owned(),
        reason,
    };
    check_secret_mode(path, own_group)?;
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
    if bytes.len() < MIN_SECRET_LEN {
        return Err(err(format!(
            "{} bytes; at least {MIN_SECRET_LEN} random bytes are required (head -c 32 /dev/urandom)",
            bytes.len()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_keys_are_deterministic_per_secret_and_epoch() {
        let mut a = FleetKeys::from_secrets(&[&[1u8; 32]]).unwrap();
        let mut b = FleetKeys::from_secrets(&[&[1u8; 32]]).unwrap();
        let mut c = FleetKeys::from_secrets(&[&[2u8; 32]]).unwrap();
        assert_eq!(a.keys_for(5).unwrap(), b.keys_for(5).unwrap());
        assert_ne!(a.keys_for(5).unwrap(), a.keys_for(6).unwrap());
        assert_ne!(a.keys_for(5).unwrap(), c.keys_for(5).unwrap());
        assert!(matches!(a.fresh_key(5), Err(KeyError::DerivedKeys)));
    }

    /// Pins the derivation: changing it would split a fleet during an upgrade.
    #[test]
    fn fleet_key_known_answer() {
        let mut k = FleetKeys::from_secrets(&[&[0x42u8; 32]]).unwrap();
        let key = k.keys_for(20_000).unwrap().remove(0);
        assert_eq!(hex(key.as_bytes()), FLEET_KAT);
    }

    /// HKDF-SHA256 computed independently (Python hmac) for secret 0x42 x 32, epoch 20000.
    const FLEET_KAT: &str = "d54dd79653194e26da5fedbab78b8741cc3e6634ce165fc4c88a4c1d350d7e65";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn open_only_secrets_add_keys() {
        let mut rolled = FleetKeys::from_secrets(&[&[2u8; 32], &[1u8; 32]]).unwrap();
        let mut old = FleetKeys::from_secrets(&[&[1u8; 32]]).unwrap();
        let keys = rolled.keys_for(9).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1], old.keys_for(9).unwrap()[0]);
    }

    #[test]
    fn secret_files_are_checked() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, [7u8; 31]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let group = std::fs::metadata(&p).unwrap().gid();
        let other = group.wrapping_add(1);
        let e = FleetKeys::from_files(&p, &[], other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("31 bytes") && e.contains("secret"), "{e}");
        std::fs::write(&p, [7u8; 32]).unwrap();
        assert!(FleetKeys::from_files(&p, &[], other).is_ok());
        let e = FleetKeys::from_files(&dir.path().join("missing"), &[], other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        // Group-readable: only when the group is the server's own (what a
        // kubelet writes under fsGroup); never writable, never for others.
        let set =
            |m: u32| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        for mode in [0o400, 0o600, 0o440, 0o640] {
            set(mode);
            assert!(FleetKeys::from_files(&p, &[], group).is_ok(), "{mode:o}");
        }
        for mode in [0o440, 0o640] {
            set(mode);
            let e = FleetKeys::from_files(&p, &[], other)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{mode:04o}")) && e.contains(&format!("gid {other}")),
                "{e}"
            );
        }
        for mode in [0o460, 0o660, 0o444, 0o604, 0o641] {
            set(mode);
            let e = FleetKeys::from_files(&p, &[], group)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
        }
    }
}
