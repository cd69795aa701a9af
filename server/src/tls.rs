//! rustls configuration for NTS-KE: TLS 1.3 only, ALPN `ntske/1`, ring.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// ALPN protocol id of NTS-KE (RFC 8915, section 4).
pub const ALPN_NTSKE: &[u8] = b"ntske/1";

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's provider: ring, with TLS_AES_128_GCM_SHA256 first and
/// chosen over the client's order. Clients (rustls, GnuTLS) list the
/// SHA-384 suite first, whose key schedule runs SHA-512 in software, while
/// SHA-256 has CPU instructions on current x86 and ARM cores: in a profile of
/// NTS-KE handshakes SHA-512 took 14 % of the server's CPU. Every TLS 1.3
/// client implements TLS_AES_128_GCM_SHA256 (RFC 8446, section 9.1).
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificate chain {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} contains no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The NTS-KE server configuration, with certificates from `certs`
/// (reloadable, chosen by SNI).
pub fn server_config(
    certs: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN_NTSKE.to_vec()];
    config.ignore_client_order = true;
    // One exchange per connection: session tickets would only cost CPU.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client configuration trusting `ca` (PEM) or, without it, the
/// webpki-roots set of public CAs.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable CA certificate in {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_NTSKE.to_vec()];
    Ok(Arc::new(config))
}
