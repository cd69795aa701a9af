//! The generator's NTS-KE client: the exchange of `ntsd::query::key_exchange`
//! (same request, same response parser, same exported keys) made for load:
//!
//! - `TCP_NODELAY`, and the request is queued before the handshake so that
//!   it leaves in the same write as the client's Finished. With Nagle's
//!   algorithm a second small write waits for the server's delayed ACK
//!   (about 40 ms on Linux), and a handshake flood would measure that timer
//!   instead of the server (seen: 170 sessions/s instead of 1,950);
//! - the address is resolved once, not per session;
//! - failures are a typed reason, counted without formatting strings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nts_client::{client_keys, KeOutcome};
use nts_proto::ke::{client_request, parse_client_response, KeClientError, ALPN_NTSKE};
use nts_proto::AeadAlgorithm;
use rustls::pki_types::ServerName;

/// Why a session failed, as counted by `keflood`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum KeFailure {
    #[error("connection refused")]
    Refused,
    #[error("connect failed")]
    Connect,
    #[error("timed out")]
    Timeout,
    #[error("connection reset or closed early")]
    Reset,
    #[error("TLS failed")]
    Tls,
    #[error("server did not negotiate ALPN ntske/1")]
    Alpn,
    #[error("NTS-KE response refused")]
    Response,
    #[error("NTS-KE response without cookies")]
    NoCookies,
    #[error("TLS exporter failed")]
    Exporter,
}

impl KeFailure {
    /// A short name for counters and RESULT keys.
    pub fn reason(self) -> &'static str {
        match self {
            KeFailure::Refused => "refused",
            KeFailure::Connect => "connect",
            KeFailure::Timeout => "timeout",
            KeFailure::Reset => "reset",
            KeFailure::Tls => "tls",
            KeFailure::Alpn => "alpn",
            KeFailure::Response => "response",
            KeFailure::NoCookies => "no-cookies",
            KeFailure::Exporter => "exporter",
        }
    }

    fn from_io(e: &std::io::Error, otherwise: KeFailure) -> KeFailure {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => KeFailure::Refused,
            K::TimedOut | K::WouldBlock => KeFailure::Timeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                KeFailure::Reset
            }
            K::InvalidData => KeFailure::Tls,
            _ => otherwise,
        }
    }
}

/// A failure and its detail (for messages; counting uses the kind only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NTS-KE with {addr}: {kind}: {detail}")]
pub struct KeError {
    pub kind: KeFailure,
    pub addr: SocketAddr,
    pub detail: String,
}

/// Where and how to run NTS-KE.
#[derive(Debug, Clone)]
pub struct KeTarget {
    pub addr: SocketAddr,
    pub name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    /// Limit of one whole session.
    pub timeout: Duration,
    /// AEADs offered, in order of preference (default: every supported one).
    pub aeads: Vec<AeadAlgorithm>,
}

impl KeTarget {
    /// Resolves `host` once; `host` is also the name the certificate must carry.
    pub fn new(
        host: &str,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("invalid server name {host}: {e}"))?;
        Ok(Self {
            addr,
            name,
            tls,
            timeout,
            aeads: AeadAlgorithm::ALL.to_vec(),
        })
    }

    /// One full NTS-KE session offering [`KeTarget::aeads`].
    pub fn session(&self) -> Result<KeOutcome, KeError> {
        let fail = |kind: KeFailure, detail: String| KeError {
            kind,
            addr: self.addr,
            detail,
        };
        let io = |otherwise: KeFailure| {
            move |e: std::io::Error| fail(KeFailure::from_io(&e, otherwise), e.to_string())
        };
        let deadline = Instant::now() + self.timeout;
        let tcp =
            TcpStream::connect_timeout(&self.addr, self.timeout).map_err(io(KeFailure::Connect))?;
        tcp.set_nodelay(true).map_err(io(KeFailure::Connect))?;
        tcp.set_read_timeout(Some(self.timeout))
            .map_err(io(KeFailure::Connect))?;
        tcp.set_write_timeout(Some(self.timeout))
            .map_err(io(KeFailure::Connect))?;
        let mut conn = rustls::ClientConnection::new(self.tls.clone(), self.name.clone())
            .map_err(|e| fail(KeFailure::Tls, e.to_string()))?;
        // Buffered until the handshake completes, then sent with Finished.
        conn.writer()
            .write_all(&client_request(&self.aeads))
            .map_err(io(KeFailure::Tls))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = Vec::with_capacity(2048);
        let mut chunk = [0u8; 4096];
        // Each read waits at most `timeout`; the deadline bounds the total.
        let result = loop {
            if Instant::now() > deadline {
                return Err(fail(KeFailure::Timeout, "session deadline".into()));
            }
            let n = match tls.read(&mut chunk) {
                Ok(n) => n,
                // A close without close_notify after a complete response is
                // tolerated (as by `ntsd query`); mid-response it is not.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(io(KeFailure::Reset)(e)),
            };
            if tls.conn.alpn_protocol() != Some(ALPN_NTSKE) {
                return Err(fail(KeFailure::Alpn, "no ALPN ntske/1".into()));
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            match parse_client_response(&buf) {
                Err(KeClientError::Incomplete) if n > 0 && buf.len() < 65536 => continue,
                Err(KeClientError::Incomplete) if n == 0 => {
                    return Err(fail(KeFailure::Reset, "closed mid-response".into()))
                }
                Err(e) => return Err(fail(KeFailure::Response, e.to_string())),
                Ok(r) => break r,
            }
        };
        if result.cookies.is_empty() {
            return Err(fail(KeFailure::NoCookies, String::new()));
        }
        let keys = client_keys(&tls.conn, &result).map_err(|e| fail(KeFailure::Exporter, e))?;
        Ok(KeOutcome { result, keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_reasons() {
        use std::io::{Error, ErrorKind};
        let f = |k| KeFailure::from_io(&Error::from(k), KeFailure::Connect).reason();
        assert_eq!(f(ErrorKind::ConnectionRefused), "refused");
        assert_eq!(f(ErrorKind::WouldBlock), "timeout");
        assert_eq!(f(ErrorKind::UnexpectedEof), "reset");
        assert_eq!(f(ErrorKind::InvalidData), "tls");
        assert_eq!(f(ErrorKind::Other), "connect");
    }

    #[test]
    fn a_refused_connection_is_typed() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let tls = nts_client::client_config(None).expect("config");
        let t = KeTarget::new("127.0.0.1", port, tls, Duration::from_secs(1)).expect("target");
        let e = t.session().expect_err("nobody listens");
        assert_eq!(e.kind, KeFailure::Refused);
    }
}
