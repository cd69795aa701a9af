//! The NTS-KE certificates: loaded and checked as pairs, chosen by SNI,
//! swapped atomically on SIGHUP or when their files change.
//!
//! ```text
//! SIGHUP ─┐
//! poll (metadata of every file, 2 s) ─┴─► load every pair ─► all good? ─► ArcSwap::store
//!                                                           └ no: one log line, old set serves on
//! TLS handshake ─► Certificates::resolve(SNI) ─► ArcSwap::load ─► CertifiedKey
//! ```
//!
//! A pair is accepted only if the chain parses and is not empty, the key
//! parses and matches the leaf (`CertifiedKey::keys_match`), and the leaf
//! has not expired. The first pair is the default: clients that send no
//! SNI, an IP address (chrony and NTPsec configured with an address), or a
//! name no certificate covers get it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::CertPair;

/// How often the certificate files are checked for a change (a stat of
/// each file: nothing to save by checking less often).
pub const POLL: Duration = Duration::from_secs(2);

/// One loaded pair.
#[derive(Debug)]
pub struct Loaded {
    pub chain: PathBuf,
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf (SAN, lower case; `*.` wildcards kept).
    pub names: Vec<String>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
}

/// The pairs in force, the default first.
#[derive(Debug)]
pub struct CertSet {
    pub pairs: Vec<Loaded>,
}

impl CertSet {
    fn choose(&self, sni: Option<&str>) -> Option<&Loaded> {
        let by_name = sni.map(str::to_ascii_lowercase).and_then(|name| {
            self.pairs
                .iter()
                .find(|p| p.names.iter().any(|n| name_matches(n, &name)))
        });
        by_name.or(self.pairs.first())
    }
}

/// RFC 6125 matching of a SAN DNS name (`*.` only as the whole left label).
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

/// Why a pair was refused.
fn refuse(pair: &CertPair, why: impl std::fmt::Display) -> String {
    format!(
        "certificate {} with key {}: {why}",
        pair.certificate_chain.display(),
        pair.private_key.display()
    )
}

/// Loads and checks one pair at `now` (Unix seconds).
pub fn load_pair(pair: &CertPair, now: i64) -> Result<Loaded, String> {
    let chain = crate::tls::load_certs(&pair.certificate_chain)?;
    let key = PrivateKeyDer::from_pem_file(&pair.private_key).map_err(|e| {
        format!(
            "cannot read private key {}: {e}",
            pair.private_key.display()
        )
    })?;
    // The server's key provider: the key signs handshakes there.
    let provider = crate::tls::server_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| refuse(pair, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(refuse(
                pair,
                format!("the key does not match the certificate ({e})"),
            ))
        }
    }
    let leaf = certified
        .end_entity_cert()
        .map_err(|e| refuse(pair, e))?
        .to_vec();
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| refuse(pair, format!("cannot parse the leaf certificate: {e}")))?;
    let not_after = x509.validity().not_after.timestamp();
    if not_after <= now {
        return Err(refuse(
            pair,
            format!(
                "expired at {} (renew it; the certificate in force keeps serving)",
                crate::clock::utc(u64::try_from(not_after).unwrap_or(0))
            ),
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(Loaded {
        chain: pair.certificate_chain.clone(),
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// Loads every pair; the first error refuses the whole set.
pub fn load_set(pairs: &[CertPair], now: i64) -> Result<CertSet, String> {
    let pairs = pairs
        .iter()
        .map(|p| load_pair(p, now))
        .collect::<Result<Vec<_>, _>>()?;
    if pairs.is_empty() {
        return Err("no certificate configured".into());
    }
    Ok(CertSet { pairs })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Device, inode, modification time (s, ns) and size of a file.
type FileStamp = (u64, u64, i64, i64, u64);

/// The certificates in force, for rustls and for the metrics.
#[derive(Debug)]
pub struct Certificates {
    pairs: Vec<CertPair>,
    current: ArcSwap<CertSet>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl Certificates {
    /// Loads `pairs` (the default first); fails the start on any bad pair.
    pub fn load(pairs: Vec<CertPair>) -> Result<Arc<Self>, String> {
        let set = load_set(&pairs, unix_now())?;
        Ok(Arc::new(Self {
            pairs,
            current: ArcSwap::from_pointee(set),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }))
    }

    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }

    /// Loads every pair again and swaps the set in for new connections, or
    /// keeps the one in force and says why (one log line per attempt).
    pub fn reload(&self, why: &str) -> Result<(), String> {
        match load_set(&self.pairs, unix_now()) {
            Ok(set) => {
                let expiry: Vec<String> = set
                    .pairs
                    .iter()
                    .map(|p| crate::clock::utc(u64::try_from(p.not_after).unwrap_or(0)))
                    .collect();
                self.current.store(Arc::new(set));
                self.reloads_ok.fetch_add(1, Relaxed);
                tracing::info!(trigger = why, expires = ?expiry, "NTS-KE certificates reloaded");
                Ok(())
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                tracing::error!(trigger = why, error = %e, "NTS-KE certificate reload refused; the certificates in force keep serving");
                Err(e)
            }
        }
    }

    /// A fingerprint of the files' metadata (following symlinks, as
    /// certbot's `live/` links point into `archive/`).
    fn fingerprint(&self) -> Vec<Option<FileStamp>> {
        use std::os::unix::fs::MetadataExt;
        self.pairs
            .iter()
            .flat_map(|p| [&p.certificate_chain, &p.private_key])
            .map(|path: &PathBuf| {
                std::fs::metadata(Path::new(path))
                    .ok()
                    .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
            })
            .collect()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        set.choose(hello.server_name()).map(|p| p.key.clone())
    }
}

/// Reloads on SIGHUP and whenever a certificate or key file changes.
///
/// A metadata poll rather than inotify (the `notify` crate): certbot
/// renews by repointing symlinks in `live/`, which an inotify watch on the
/// configured paths does not see, and a poll needs no watch descriptors. A
/// file caught half-written fails to load, is logged once, and is loaded
/// once its metadata changes again.
pub async fn watch(
    certs: Arc<Certificates>,
    mut hup: tokio::signal::unix::Signal,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen = certs.fingerprint();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = tick.tick() => "file change",
            _ = stop.changed() => return,
        };
        let now = certs.fingerprint();
        if trigger == "file change" && now == seen {
            continue;
        }
        seen = now;
        let _ = certs.reload(trigger);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_as_rfc_6125_says() {
        assert!(name_matches("ntp.example.net", "ntp.example.net"));
        assert!(name_matches("*.example.net", "ntp.example.net"));
        assert!(!name_matches("*.example.net", "example.net"));
        assert!(!name_matches("*.example.net", "a.b.example.net"));
        assert!(!name_matches("ntp.example.net", "time.example.net"));
    }
}
