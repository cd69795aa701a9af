//! The client's rustls configuration for NTS-KE: TLS 1.3 only, ALPN
//! `ntske/1`, ring for every operation.

use std::path::Path;
use std::sync::Arc;

use nts_proto::ke::ALPN_NTSKE;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The certificates of a PEM file, in order; an error names the file.
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

/// A client configuration trusting `ca` (PEM) or, without it, the
/// webpki-roots set of public CAs.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    client_config_offering(ca, rustls::crypto::ring::default_provider().kx_groups)
}

/// [`client_config`] offering the key-exchange `groups` in that order (a
/// key share for the first), for measuring what a kind of client costs a
/// server (`ntsd-bench keflood --post-quantum`).
pub fn client_config_offering(
    ca: Option<&Path>,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> Result<Arc<rustls::ClientConfig>, String> {
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
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = groups;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_NTSKE.to_vec()];
    Ok(Arc::new(config))
}
