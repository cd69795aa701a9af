//! rustls configuration for NTS-KE: TLS 1.3 only, ALPN `ntske/1`. The
//! server does its public-key work (key exchange, signing) with aws-lc-rs and
//! its record protection with ring; clients (`ntsd query`) use ring.

use std::sync::Arc;

use nts_proto::ke::ALPN_NTSKE;

/// The server's provider.
///
/// Cipher suites: ring, with TLS_AES_128_GCM_SHA256 first and chosen over
/// the client's order. Clients (rustls, GnuTLS) list the SHA-384 suite
/// first, whose key schedule runs SHA-512 in software, while SHA-256 has CPU
/// instructions on current x86 and ARM cores, and SHA-512 showed up in
/// profiles of NTS-KE handshakes. Every TLS 1.3 client implements
/// TLS_AES_128_GCM_SHA256 (RFC 8446, section 9.1).
///
/// Key exchange and signing: aws-lc-rs, whose X25519 (s2n-bignum) and
/// ECDSA cost the server less CPU per handshake than ring's, where X25519
/// dominated the handshake (paired `ntsd-bench keflood` rounds in
/// bench/RESULTS.md, issue 16). Record protection stays with ring: an
/// NTS-KE session has a handful of records, and aws-lc-rs's cipher suites
/// measured no faster. The groups
/// are aws-lc-rs's: X25519, P-256, P-384, and the hybrid X25519MLKEM768
/// for clients that offer it. A TLS 1.3 server takes the client's
/// preferred group among those it supports, so the order here only
/// matters for which groups exist.
pub(crate) fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::{aws_lc_rs, ring::cipher_suite};
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    p.kx_groups = vec![
        aws_lc_rs::kx_group::X25519,
        aws_lc_rs::kx_group::SECP256R1,
        aws_lc_rs::kx_group::SECP384R1,
        aws_lc_rs::kx_group::X25519MLKEM768,
    ];
    p.key_provider = aws_lc_rs::default_provider().key_provider;
    Arc::new(p)
}

/// The NTS-KE server configuration, with certificates from `certs`
/// (reloadable, chosen by SNI).
pub(crate) fn server_config(
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::{aws_lc_rs, ring};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::NamedGroup;

    /// One in-memory handshake against `server_config`, with a certificate
    /// whose key is of `alg`, from a client with `groups` (in its order of
    /// preference, a key share for the first); the server's chosen group.
    fn handshake_with(
        alg: &'static rcgen::SignatureAlgorithm,
        groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
    ) -> NamedGroup {
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
        let signing = server_provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
        let certified = rustls::sign::CertifiedKey::new(vec![der.clone()], signing);
        let server =
            server_config(Arc::new(rustls::sign::SingleCertAndKey::from(certified))).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut provider = ring::default_provider();
        provider.kx_groups = groups;
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![ALPN_NTSKE.to_vec()];
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        let mut rounds = 0;
        while c.is_handshaking() || s.is_handshaking() {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().unwrap();
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().unwrap();
            rounds += 1;
            assert!(rounds < 5, "the handshake does not finish");
        }
        // Hello, the server's flight, the client's Finished: two rounds. A
        // HelloRetryRequest (the server wanting another key share) makes it
        // three.
        assert_eq!(rounds, 2, "the server asked for another key share");
        s.negotiated_key_exchange_group().unwrap().name()
    }

    fn handshake(groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>) -> NamedGroup {
        handshake_with(&rcgen::PKCS_ECDSA_P256_SHA256, groups)
    }

    /// The server's key provider (aws-lc-rs) signs with P-384 and Ed25519
    /// keys as well as P-256 (above). RSA keys go through the same
    /// `any_supported_type`, but rcgen on ring cannot generate one.
    #[test]
    fn p384_and_ed25519_certificates_sign_handshakes() {
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            assert_eq!(
                handshake_with(alg, vec![ring::kx_group::X25519]),
                NamedGroup::X25519
            );
        }
    }

    #[test]
    fn the_server_takes_the_clients_first_group_without_a_retry() {
        use aws_lc_rs::kx_group as aws;
        use ring::kx_group as ring_kx;
        assert_eq!(
            handshake(vec![ring_kx::X25519, ring_kx::SECP256R1]),
            NamedGroup::X25519
        );
        assert_eq!(
            handshake(vec![ring_kx::SECP256R1, ring_kx::X25519]),
            NamedGroup::secp256r1
        );
        assert_eq!(handshake(vec![ring_kx::SECP384R1]), NamedGroup::secp384r1);
        // A post-quantum client (rustls with aws-lc-rs) gets the hybrid.
        assert_eq!(
            handshake(vec![aws::X25519MLKEM768, aws::X25519]),
            NamedGroup::X25519MLKEM768
        );
    }
}
