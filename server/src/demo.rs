//! `ntsd demo`: NTS on loopback with a throwaway CA, no files needed.
//!
//! The leaf certificate is signed by a separate CA because ntpd-rs refuses
//! a self-signed CA certificate used as the server's own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::config::{
    Config, HumanDuration, KeysConfig, NtpConfig, NtsKeConfig, TimeConfig, TimeSource,
};

/// Writes `ca.pem`, `chain.pem` and `key.pem` (mode 0600) into `dir`.
pub fn write_test_pki(dir: &Path) -> Result<(), String> {
    let err = |e: rcgen::Error| format!("certificate generation failed: {e}");
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ntsd demo CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).map_err(err)?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).map_err(err)?;

    let write = |name: &str, text: &str, mode: u32| -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write("ca.pem", &ca_cert.pem(), 0o644)?;
    write(
        "chain.pem",
        &format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        0o644,
    )?;
    write("key.pem", &leaf_key.serialize_pem(), 0o600)?;
    Ok(())
}

/// Loopback addresses this host can bind (IPv6 may be disabled).
fn loopbacks() -> Vec<SocketAddr> {
    let v6: SocketAddr = (Ipv6Addr::LOCALHOST, 0).into();
    let mut out = vec![(Ipv4Addr::LOCALHOST, 0).into()];
    if std::net::UdpSocket::bind(v6).is_ok() {
        out.push(v6);
    }
    out
}

pub fn run() -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("ntsd-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    write_test_pki(dir.path())?;
    let config = Config {
        ntp: NtpConfig {
            listen: loopbacks(),
            workers: 1,
            ..NtpConfig::default()
        },
        nts_ke: NtsKeConfig {
            listen: loopbacks(),
            certificate_chain: dir.path().join("chain.pem"),
            private_key: dir.path().join("key.pem"),
            certificate: Vec::new(),
            ntp_server: None,
            ntp_port: None,
            max_connections: 64,
            timeout: HumanDuration(std::time::Duration::from_secs(5)),
            threads: 1,
            max_connections_per_address: 32,
            rate_limit: None,
            allow: None,
            deny: None,
        },
        keys: KeysConfig {
            dump_dir: Some(dir.path().join("state")),
            ..KeysConfig::default()
        },
        time: TimeConfig {
            source: TimeSource::Local,
            ..TimeConfig::default()
        },
        ..Config::default()
    };
    config.validate()?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "ntsd".into());
    let ca = dir.path().join("ca.pem");
    crate::run::run(config, |bound| {
        let ntp = bound.ntp.first().map_or(0, |a| a.port());
        let ke = bound.ke.first().map_or(0, |a| a.port());
        let text = format!(
            "ntsd demo: serving NTS on loopback (state in {})\n  NTS-KE (TCP): {:?}   NTP (UDP): {:?}\n\n\
             Verify with ntsd:\n  {exe} query localhost:{ke} --ca {ca}\n\
             Verify with chrony (as root):\n  chronyd -Q -f /dev/null -u root -t 5 \"server localhost port {ntp} nts ntsport {ke} iburst maxsamples 1\" \"ntstrustedcerts {ca}\"\n\n\
             Stop with Ctrl-C.\n",
            dir.path().display(),
            bound.ke,
            bound.ntp,
            ca = ca.display(),
        );
        // A closed stdout (`ntsd demo | head -3`) must not stop the server.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    })
}
