//! NTS-KE as a client, over a blocking TLS stream: one request, one
//! response, then the session keys from the TLS exporter.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use nts_proto::ke::{
    client_request, exporter_aead, exporter_context, parse_client_response, KeClientError,
    KeClientResult, ALPN_NTSKE, EXPORTER_LABEL,
};
use nts_proto::{AeadAlgorithm, AeadKey, SessionKeys};
use rustls::pki_types::ServerName;

/// The NTS-KE port (RFC 8915, section 4).
pub const DEFAULT_KE_PORT: u16 = 4460;

/// Splits `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
pub fn split_host_port(target: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("cannot parse {target:?} as HOST[:PORT]");
    if let Some(rest) = target.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        return Ok((host.to_owned(), port));
    }
    if target.matches(':').count() > 1 {
        // An IPv6 address without brackets: "::1:1123" is both the address
        // ::1:1123 and ::1 with port 1123, so brackets are required.
        return Err(ipv6_brackets(target));
    }
    match target.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Ok((h.to_owned(), p.parse().map_err(|_| bad())?)),
        Some(_) => Err(bad()),
        None if target.is_empty() => Err(bad()),
        None => Ok((target.to_owned(), default_port)),
    }
}

/// The error for an IPv6 address written without brackets, with the
/// spelling that was probably meant.
pub fn ipv6_brackets(target: &str) -> String {
    let guess = match target.rsplit_once(':') {
        Some((a, p)) if a.parse::<std::net::Ipv6Addr>().is_ok() && p.parse::<u16>().is_ok() => {
            format!(" (\"[{a}]:{p}\" for {a} port {p})")
        }
        _ => String::new(),
    };
    format!(
        "{target:?}: an IPv6 address needs brackets, as \"[{target}]\" or with a port \"[ADDRESS]:PORT\"{guess}"
    )
}

/// The first address of `host:port`.
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// The outcome of a KE session, with the keys for the NTP exchange.
#[derive(Debug)]
pub struct KeOutcome {
    pub result: KeClientResult,
    pub keys: SessionKeys,
}

/// Runs NTS-KE against `host:port`, offering `aeads`.
pub fn key_exchange(
    host: &str,
    port: u16,
    config: Arc<rustls::ClientConfig>,
    aeads: &[AeadAlgorithm],
    timeout: Duration,
) -> Result<KeOutcome, String> {
    let addr = resolve(host, port)?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("NTS-KE connect to {addr}: {e}"))?;
    // The TLS Finished and the NTS-KE request are two small writes; with
    // Nagle's algorithm the second waits for the server's delayed ACK (~40 ms).
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("invalid server name {host}: {e}"))?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&client_request(aeads))
        .map_err(|e| format!("NTS-KE handshake with {addr}: {e}"))?;
    if tls.conn.alpn_protocol() != Some(ALPN_NTSKE) {
        return Err("server did not negotiate ALPN ntske/1".into());
    }
    let mut buf = Vec::new();
    let result = loop {
        let mut chunk = [0u8; 4096];
        let n = match tls.read(&mut chunk) {
            Ok(n) => n,
            // A server that closes without close_notify after a complete
            // response is tolerated; one that does so mid-response is not.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(format!("NTS-KE read: {e}")),
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        match parse_client_response(&buf) {
            Err(KeClientError::Incomplete) if n > 0 && buf.len() < 65536 => continue,
            Err(e) => return Err(format!("NTS-KE: {e}")),
            Ok(r) => break r,
        }
    };
    let keys = client_keys(&tls.conn, &result)?;
    Ok(KeOutcome { result, keys })
}

/// The session keys a client exports after NTS-KE (RFC 8915, section
/// 5.1), with the exporter context that `result` calls for (chrony's
/// AEAD-30 rule: [`exporter_aead`]).
pub fn client_keys(
    conn: &rustls::ClientConnection,
    result: &KeClientResult,
) -> Result<SessionKeys, String> {
    let export = |s2c: bool| -> Result<AeadKey, String> {
        // Wiped when dropped, as the server's export buffer is.
        let mut key = zeroize::Zeroizing::new([0u8; nts_proto::aead::MAX_KEY_LEN]);
        let key = key
            .get_mut(..result.aead.key_len())
            .ok_or("exported key has the wrong length")?;
        conn.export_keying_material(
            &mut *key,
            EXPORTER_LABEL,
            Some(&exporter_context(
                exporter_aead(result.aead, result.compliant_128gcm_export),
                s2c,
            )),
        )
        .map_err(|e| format!("TLS exporter: {e}"))?;
        AeadKey::new(result.aead, key).ok_or_else(|| "exported key has the wrong length".to_owned())
    };
    Ok(SessionKeys {
        c2s: export(false)?,
        s2c: export(true)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("a.example", 4460),
            Ok(("a.example".into(), 4460))
        );
        assert_eq!(
            split_host_port("a.example:99", 4460),
            Ok(("a.example".into(), 99))
        );
        assert_eq!(split_host_port("[::1]:99", 4460), Ok(("::1".into(), 99)));
        assert_eq!(split_host_port("[::1]", 4460), Ok(("::1".into(), 4460)));
        let e = split_host_port("::1", 4460).unwrap_err();
        assert!(e.contains("needs brackets") && e.contains("[::1]"), "{e}");
        let e = split_host_port("::1:1123", 123).unwrap_err();
        assert!(e.contains("\"[::1]:1123\" for ::1 port 1123"), "{e}");
        assert!(split_host_port("a:b", 4460).is_err());
        assert!(split_host_port("", 4460).is_err());
    }
}
