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
//! No usable pair at start (missing, unreadable, expired, mismatched) does
//! not stop ntsd: NTS-KE refuses connections until one loads, and NTP is
//! served meanwhile.
//!
//! A pair is accepted only if the chain parses and is not empty, the key
//! parses and matches the leaf (`CertifiedKey::keys_match`), and the leaf
//! has not expired. The first pair is the default: clients that send no
//! SNI, an IP address (chrony and NTPsec configured with an address), or a
//! name no certificate covers get it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::CertPair;

/// How often the certificate files are checked for a change (a stat of
/// each file: nothing to save by checking less often).
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// One loaded pair.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) chain: PathBuf,
    pub(crate) key: Arc<CertifiedKey>,
    /// DNS names of the leaf (SAN, lower case; `*.` wildcards kept).
    pub(crate) names: Vec<String>,
    /// The leaf's notAfter, Unix seconds.
    pub(crate) not_after: i64,
}

/// The pairs in force, the default first.
#[derive(Debug)]
pub(crate) struct CertSet {
    pub(crate) pairs: Vec<Loaded>,
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
pub(crate) fn load_pair(pair: &CertPair, now: i64) -> Result<Loaded, String> {
    let chain = nts_client::load_certs(&pair.certificate_chain)?;
    let key = PrivateKeyDer::from_pem_file(&pair.private_key).map_err(|e| {
        format!(
            "cannot read private key {}: {e}",
            pair.private_key.display()
        )
    })?;
    // The server's key provider: the key signs handshakes there.
    let provider = crate::ke::tls::server_provider();
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
                "expired at {} (renew it)",
                crate::time::clock::utc(u64::try_from(not_after).unwrap_or(0))
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
pub(crate) fn load_set(pairs: &[CertPair], now: i64) -> Result<CertSet, String> {
    let pairs = pairs
        .iter()
        .map(|p| load_pair(p, now))
        .collect::<Result<Vec<_>, _>>()?;
    if pairs.is_empty() {
        return Err("no certificate configured".into());
    }
    Ok(CertSet { pairs })
}

/// The wall clock in Unix seconds, as certificate times are compared.
fn unix_now() -> i64 {
    i64::try_from(crate::time::clock::unix_secs()).unwrap_or(i64::MAX)
}

/// Device, inode, modification and change times (s, ns) and size of a
/// file. The change time catches a `chmod` or `chgrp` that makes a file
/// readable, which changes nothing else.
type FileStamp = (u64, u64, i64, i64, i64, i64, u64);

/// How often, at most, the reason NTS-KE is down is logged again while it
/// stays the same.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(60);

/// The certificates in force, for rustls and for the metrics.
///
/// A problem with the certificates never stops the server: without a
/// usable set NTS-KE refuses connections (before TLS, counted as
/// `no_certificate`) while NTP and NTS with existing cookies are served,
/// and the watcher keeps trying until a valid pair appears.
#[derive(Debug)]
pub(crate) struct Certificates {
    pairs: Vec<CertPair>,
    current: ArcSwapOption<CertSet>,
    /// Why there is no usable set, while there is none.
    problem: std::sync::Mutex<Option<String>>,
    /// The files' metadata when they were last loaded (or tried).
    seen: std::sync::Mutex<Vec<Option<FileStamp>>>,
    /// When the reason NTS-KE is down was last logged.
    down_logged: std::sync::Mutex<Option<std::time::Instant>>,
    pub(crate) reloads_ok: AtomicU64,
    pub(crate) reloads_failed: AtomicU64,
}

impl crate::ops::health::CertificateState for Certificates {
    fn usable(&self) -> bool {
        Certificates::usable(self)
    }

    fn problem(&self) -> Option<String> {
        Certificates::problem(self)
    }

    fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
        )
    }

    fn expiries(&self) -> Vec<(String, i64)> {
        self.current().map_or_else(Vec::new, |set| {
            set.pairs
                .iter()
                .map(|p| (p.chain.display().to_string(), p.not_after))
                .collect()
        })
    }
}

impl Certificates {
    /// Loads `pairs` (the default first). A pair that does not load leaves
    /// NTS-KE down until it does; the error is logged and returned by
    /// [`Certificates::problem`].
    pub(crate) fn load(pairs: Vec<CertPair>) -> Arc<Self> {
        let certs = Arc::new(Self {
            current: ArcSwapOption::empty(),
            problem: std::sync::Mutex::new(None),
            seen: std::sync::Mutex::new(Vec::new()),
            down_logged: std::sync::Mutex::new(None),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            pairs,
        });
        certs.remember_files();
        match load_set(&certs.pairs, unix_now()) {
            Ok(set) => certs.current.store(Some(Arc::new(set))),
            Err(e) => {
                tracing::error!(error = %e, "NTS-KE is down: no usable certificate; NTP and NTS with existing cookies are served, and NTS-KE starts by itself once a valid certificate and key are in place");
                certs.set_problem(Some(e));
                *certs.down_logged.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(std::time::Instant::now());
            }
        }
        certs
    }

    /// The set in force, if any.
    pub(crate) fn current(&self) -> Option<Arc<CertSet>> {
        self.current.load_full()
    }

    /// Whether NTS-KE has a certificate to serve.
    pub(crate) fn usable(&self) -> bool {
        self.current.load().is_some()
    }

    /// Why NTS-KE has no certificate, while it has none.
    pub(crate) fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_problem(&self, why: Option<String>) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn remember_files(&self) -> bool {
        let now = self.fingerprint();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *seen != now;
        *seen = now;
        changed
    }

    /// Loads every pair again and swaps the set in for new connections, or
    /// keeps the one in force (if any) and says why (one log line per
    /// attempt). A `retry` (a poll while NTS-KE is down, nothing changed)
    /// is not counted, and its failure is logged only if the reason changed
    /// or [`DOWN_LOG_EVERY`] has passed.
    fn reload_logged(&self, why: &str, retry: bool) -> Result<(), String> {
        match load_set(&self.pairs, unix_now()) {
            Ok(set) => {
                let expiry: Vec<String> = set
                    .pairs
                    .iter()
                    .map(|p| crate::time::clock::utc(u64::try_from(p.not_after).unwrap_or(0)))
                    .collect();
                let was_down = !self.usable();
                self.current.store(Some(Arc::new(set)));
                self.set_problem(None);
                self.reloads_ok.fetch_add(1, Relaxed);
                match was_down {
                    true => {
                        tracing::warn!(trigger = why, expires = ?expiry, "NTS-KE is up: certificates loaded")
                    }
                    false => {
                        tracing::info!(trigger = why, expires = ?expiry, "NTS-KE certificates reloaded")
                    }
                }
                Ok(())
            }
            Err(e) if self.usable() => {
                self.reloads_failed.fetch_add(1, Relaxed);
                tracing::error!(trigger = why, error = %e, "NTS-KE certificate reload refused; the certificates in force keep serving");
                Err(e)
            }
            Err(e) => {
                if !retry {
                    self.reloads_failed.fetch_add(1, Relaxed);
                }
                let same = self.problem().as_deref() == Some(e.as_str());
                let mut logged = self.down_logged.lock().unwrap_or_else(|p| p.into_inner());
                let due = logged.is_none_or(|t| t.elapsed() >= DOWN_LOG_EVERY);
                if !retry || !same || due {
                    tracing::error!(trigger = why, error = %e, "NTS-KE is still down: no usable certificate; NTP is served");
                    *logged = Some(std::time::Instant::now());
                }
                drop(logged);
                self.set_problem(Some(e.clone()));
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
                std::fs::metadata(Path::new(path)).ok().map(|m| {
                    let t = (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
                    (m.dev(), m.ino(), t.0, t.1, t.2, t.3, m.size())
                })
            })
            .collect()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        set.as_ref()?
            .choose(hello.server_name())
            .map(|p| p.key.clone())
    }
}

/// Reloads on SIGHUP and whenever a certificate or key file changes; while
/// NTS-KE is down, also on every poll (a fix such as a permission change,
/// or a clock that was behind, changes no file), logging the reason again
/// only when it changes or once per [`DOWN_LOG_EVERY`].
///
/// A metadata poll rather than inotify (the `notify` crate): certbot
/// renews by repointing symlinks in `live/`, which an inotify watch on the
/// configured paths does not see, and a poll needs no watch descriptors. A
/// file caught half-written fails to load, is logged once, and is loaded
/// once its metadata changes again.
pub(crate) async fn watch(
    certs: Arc<Certificates>,
    mut hup: tokio::signal::unix::Signal,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = tick.tick() => "file change",
            _ = stop.changed() => return,
        };
        let changed = certs.remember_files();
        let polled = trigger == "file change" && !changed;
        if polled && certs.usable() {
            continue;
        }
        let _ = certs.reload_logged(trigger, polled);
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
