//! The client side of NTS, shared by `ntsd query`, the server's tests and
//! `ntsd-bench`: the TLS client configuration, NTS-KE over a blocking TLS
//! stream with the key export of RFC 8915, section 5.1, and a throwaway PKI
//! for demos and tests.
//!
//! ```text
//! tls::client_config(ca) ─► ke::key_exchange(host, port, aeads)
//!     TLS 1.3 + ALPN ntske/1 ─► nts_proto::ke::client_request / parse_client_response
//!     ─► ke::client_keys (TLS exporter) ─► KeOutcome { result, keys }
//!     ─► nts_proto::client::NtsClient (the NTP exchange, sans-IO)
//! ```
//!
//! Everything protocol-shaped (records, packets, AEADs) is in `nts-proto`;
//! this crate adds only sockets, TLS and files.

pub mod ke;
pub mod pki;
pub mod tls;

pub use ke::{client_keys, key_exchange, split_host_port, KeOutcome, DEFAULT_KE_PORT};
pub use pki::write_test_pki;
pub use tls::{client_config, client_config_offering, load_certs};
