//! Certificates are reloaded without a restart: on SIGHUP and when their
//! files change; a bad pair is refused and the one in force keeps serving;
//! several certificates are chosen by SNI.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{unsafe_free_kill, Ntsd};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};

/// A CA and a leaf for `names` (DNS names; 127.0.0.1 is always added).
struct Pki {
    ca_pem: String,
    chain_pem: String,
    key_pem: String,
    leaf_der: Vec<u8>,
}

fn pki(names: &[&str], expired: bool) -> Pki {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    if expired {
        leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        chain_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key_pem: key.serialize_pem(),
        leaf_der: leaf_cert.der().to_vec(),
    }
}

/// Writes `text` to `path` atomically (temporary file, rename), as
/// certbot and configuration management do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A TLS handshake with ALPN ntske/1, trusting `cas`, sending `sni` (a DNS
/// name) or none (an IP address); returns the leaf the server presented.
fn presented(port: u16, cas: &[&str], sni: Option<&str>) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in cas {
        use rustls::pki_types::pem::PemObject;
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"ntske/1".to_vec()];
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
        None => ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into()),
    };
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let leaf = conn.peer_certificates().and_then(|c| c.first()).unwrap();
    Ok(leaf.to_vec())
}

struct Setup {
    dir: tempfile::TempDir,
    chain: PathBuf,
    key: PathBuf,
}

fn setup(first: &Pki, extra_tail: &str) -> (Setup, Ntsd) {
    let dir = common::pki_dir();
    let chain = dir.path().join("chain.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&chain, &first.chain_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let cfg = common::write_config(dir.path(), "ntsd.toml", "auto", extra_tail);
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    (Setup { dir, chain, key }, s)
}

/// Waits until a new connection sees `leaf`.
fn wait_for_leaf(s: &Ntsd, cas: &[&str], leaf: &[u8], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if presented(s.ke_port, cas, None).as_deref() == Ok(leaf) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "the new certificate was not served within {within:?}:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_reloads_and_bad_pairs_are_refused() {
    let (a, b) = (pki(&["localhost"], false), pki(&["localhost"], false));
    let (setup, s) = setup(&a, "");
    let cas = [a.ca_pem.as_str(), b.ca_pem.as_str()];
    let pid = s.pid();
    assert_eq!(presented(s.ke_port, &cas, None).unwrap(), a.leaf_der);

    // A renewal: both files replaced, then SIGHUP.
    replace(&setup.chain, &b.chain_pem);
    replace(&setup.key, &b.key_pem);
    unsafe_free_kill(pid, "HUP");
    wait_for_leaf(&s, &cas, &b.leaf_der, Duration::from_secs(3));
    assert_eq!(s.pid(), pid);
    assert_eq!(
        s.wait_metric("ntsd_ke_certificate_reloads_total{result=\"ok\"}", 1),
        1
    );
    // NTS-KE still works end to end (its cookies come from the same keys).
    let ca_b = write(setup.dir.path(), "b-ca.pem", &b.ca_pem);
    let (ok, out) = common::output(
        std::process::Command::new(common::BIN)
            .args(["query", &format!("127.0.0.1:{}", s.ke_port), "--ca"])
            .arg(&ca_b),
    );
    assert!(ok, "{out}");

    // Garbage, a key of another certificate, an expired certificate: each
    // refused with one log line; the certificate in force keeps serving.
    let expired = pki(&["localhost"], true);
    let bad: [(&str, &str, &str); 3] = [
        ("not a certificate\n", &b.key_pem, "no PEM certificate"),
        (&b.chain_pem, &a.key_pem, "does not match"),
        (&expired.chain_pem, &expired.key_pem, "expired"),
    ];
    for (i, (chain, key, why)) in bad.into_iter().enumerate() {
        replace(&setup.chain, chain);
        replace(&setup.key, key);
        unsafe_free_kill(pid, "HUP");
        let refused = s.wait_metric(
            "ntsd_ke_certificate_reloads_total{result=\"refused\"}",
            i as u64 + 1,
        );
        assert!(refused > i as u64, "{why}: not refused\n{}", s.log_text());
        assert!(
            s.wait_log(why),
            "no log line saying {why:?}:\n{}",
            s.log_text()
        );
        assert_eq!(
            presented(s.ke_port, &cas, None).unwrap(),
            b.leaf_der,
            "{why}"
        );
    }
    let refusals = s
        .log_text()
        .lines()
        .filter(|l| l.contains("certificate reload refused"))
        .count();
    assert!(
        (3..=6).contains(&refusals),
        "{refusals} refusal lines:\n{}",
        s.log_text()
    );
    assert_eq!(s.pid(), pid);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_renewal_is_picked_up_without_sighup() {
    let (a, b) = (pki(&["localhost"], false), pki(&["localhost"], false));
    let (setup, s) = setup(&a, "");
    let cas = [a.ca_pem.as_str(), b.ca_pem.as_str()];
    assert_eq!(presented(s.ke_port, &cas, None).unwrap(), a.leaf_der);
    replace(&setup.key, &b.key_pem);
    replace(&setup.chain, &b.chain_pem);
    let took = wait_for_leaf(&s, &cas, &b.leaf_der, Duration::from_secs(15));
    eprintln!("renewal served {took:?} after the files changed");
    let expiry = s
        .metrics_f64()
        .into_iter()
        .find(|(k, _)| k.starts_with("ntsd_ke_certificate_expiry_timestamp_seconds{"))
        .expect("expiry metric")
        .1;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "expiry {expiry} is not in the future");
}

#[test]
fn certificates_are_chosen_by_sni_with_the_first_as_default() {
    let first = pki(&["localhost", "ntp.example.test"], false);
    let second = pki(&["time.example.org", "*.pool.example.org"], false);
    let dir = common::pki_dir();
    let (c2, k2) = (
        write(dir.path(), "second-chain.pem", &second.chain_pem),
        write(dir.path(), "second-key.pem", &second.key_pem),
    );
    let ke_extra = format!(
        "\n[[nts_ke.certificate]]\ncertificate_chain = \"{}\"\nprivate_key = \"{}\"\n",
        c2.display(),
        k2.display()
    );
    std::fs::write(dir.path().join("chain.pem"), &first.chain_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &first.key_pem).unwrap();
    let cfg = dir.path().join("ntsd.toml");
    // [[nts_ke.certificate]] must come after the [nts_ke] keys: put it last.
    let text = common::config_text(dir.path(), "auto", "", "", &ke_extra);
    std::fs::write(&cfg, text).unwrap();
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    let cas = [first.ca_pem.as_str(), second.ca_pem.as_str()];
    let leaf = |sni| presented(s.ke_port, &cas, sni).unwrap();
    assert_eq!(leaf(Some("time.example.org")), second.leaf_der);
    assert_eq!(leaf(Some("a.pool.example.org")), second.leaf_der);
    assert_eq!(leaf(Some("ntp.example.test")), first.leaf_der);
    // No SNI (a client configured with an IP address): the first.
    assert_eq!(leaf(None), first.leaf_der);
    // A name no certificate covers also gets the first (which then fails
    // the client's name check, as it should).
    assert!(presented(s.ke_port, &cas, Some("other.example.net")).is_err());
    let expiries = s
        .metrics()
        .into_iter()
        .filter(|(k, _)| k.starts_with("ntsd_ke_certificate_expiry_timestamp_seconds{"))
        .count();
    assert_eq!(expiries, 2);
}

/// An expired certificate at start (a renewal failed, then a reboot) takes
/// NTS-KE down and nothing else: plain NTP and the cookies clients already
/// hold are served, NTS-KE refuses connections, and once a valid pair is
/// swapped in through its symlinks (as certbot renews) NTS-KE serves within
/// a few seconds, with no signal and no restart.
#[test]
fn an_expired_certificate_at_start_takes_only_nts_ke_down_until_renewed() {
    let dir = common::pki_dir();
    let (state, cfg) = {
        let state = dir.path().join("state");
        let tail = format!("[keys]\ndump_dir = \"{}\"\n", state.display());
        (
            state,
            common::write_config(dir.path(), "ntsd.toml", "auto", &tail),
        )
    };
    // A first run with the valid pair: a client gets its cookies.
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    let (mut client, _) = common::client_of(&s);
    assert!(s.terminate().success());
    assert!(state.join("keys").exists());

    // certbot's layout: the configured paths are symlinks into archive/.
    let archive = dir.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let (chain, key) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
    std::fs::rename(&chain, archive.join("good-chain.pem")).unwrap();
    std::fs::rename(&key, archive.join("good-key.pem")).unwrap();
    let expired = pki(&["localhost"], true);
    write(&archive, "old-chain.pem", &expired.chain_pem);
    write(&archive, "old-key.pem", &expired.key_pem);
    let link = |path: &Path, target: &str| {
        let tmp = path.with_extension("link");
        std::os::unix::fs::symlink(archive.join(target), &tmp).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    link(&chain, "old-chain.pem");
    link(&key, "old-key.pem");

    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    assert!(s.log_text().contains("expired"), "{}", s.log_text());
    let sock = common::udp_client(s.ntp_port);
    let plain = nts_proto::NtpHeader::client_request(nts_proto::NtpTimestamp(9)).to_bytes();
    assert!(
        common::exchange(&sock, &plain).is_some(),
        "plain NTP unanswered"
    );
    for seed in 1..4 {
        assert_eq!(
            common::try_cookie(&mut client, s.ntp_port, seed),
            common::Outcome::Authenticated,
            "an existing cookie was not served"
        );
    }
    let ke = || common::try_key_exchange(&s);
    assert!(ke().is_err(), "NTS-KE served an expired certificate");
    assert!(s.wait_metric("ntsd_ke_errors_total{reason=\"no_certificate\"}", 1) >= 1);
    assert!(s.metrics().contains(&("ntsd_ke_up".to_owned(), 0)));
    let (status, body) = s.http_get("/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("NTS-KE") && body.contains("expired"),
        "{body}"
    );

    // The renewal lands: both links repointed, no signal.
    link(&chain, "good-chain.pem");
    link(&key, "good-key.pem");
    let start = Instant::now();
    while ke().is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "NTS-KE did not come up after the renewal:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("NTS-KE up {:?} after the symlink swap", start.elapsed());
    assert!(s.metrics().contains(&("ntsd_ke_up".to_owned(), 1)));
    let (status, body) = s.http_get("/readyz/nts-ke");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("degraded"), "{body}");
    let (mut fresh, _) = common::client_of(&s);
    assert_eq!(
        common::try_cookie(&mut fresh, s.ntp_port, 7),
        common::Outcome::Authenticated
    );
}

/// SIGHUP reloads certificates only: after an edit of the configuration
/// file it says that a restart is needed, and without one it says nothing.
#[test]
fn sighup_after_a_config_edit_says_a_restart_is_needed() {
    let s = Ntsd::start("portable");
    let cfg = s.dir.join("ntsd.toml");
    let reloads = "ntsd_ke_certificate_reloads_total{result=\"ok\"}";
    unsafe_free_kill(s.pid(), "HUP");
    assert_eq!(s.wait_metric(reloads, 1), 1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !s.log_text().contains("restart ntsd to apply"),
        "{}",
        s.log_text()
    );
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n# an edit\n");
    std::fs::write(&cfg, text).unwrap();
    unsafe_free_kill(s.pid(), "HUP");
    assert!(
        s.wait_log("restart ntsd to apply the new configuration"),
        "{}",
        s.log_text()
    );
    assert!(s.terminate().success());
}
