//! `ntsd query`: one NTS-KE and one authenticated NTP exchange, printed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nts_proto::client::{offset_delay, NtsClient, NONCE_LEN, UNIQUE_ID_LEN};
use nts_proto::ke::{
    client_request, exporter_aead, exporter_context, parse_client_response, KeClientError,
    KeClientResult, EXPORTER_LABEL,
};
use nts_proto::{AeadAlgorithm, AeadKey, SessionKeys};
use ring::rand::SecureRandom;
use rustls::pki_types::ServerName;

use crate::clock::now_ntp;
use crate::tls::ALPN_NTSKE;

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
    if target.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((target.to_owned(), default_port));
    }
    match target.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Ok((h.to_owned(), p.parse().map_err(|_| bad())?)),
        Some(_) => Err(bad()),
        None if target.is_empty() => Err(bad()),
        None => Ok((target.to_owned(), default_port)),
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
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

/// `ntsd query`: NTS-KE offering `aead_ids` (every supported AEAD when
/// empty), then one authenticated exchange.
pub fn run(
    target: &str,
    ca: Option<&Path>,
    aead_ids: &[u16],
    timeout: Duration,
) -> Result<(), String> {
    let (host, port) = split_host_port(target, DEFAULT_KE_PORT)?;
    let config = crate::tls::client_config(ca)?;
    let aeads = if aead_ids.is_empty() {
        AeadAlgorithm::ALL.to_vec()
    } else {
        aead_ids
            .iter()
            .map(|&id| AeadAlgorithm::from_id(id).ok_or_else(|| format!("unsupported AEAD {id}")))
            .collect::<Result<Vec<_>, _>>()?
    };
    let ke = key_exchange(&host, port, config, &aeads, timeout)?;
    let r = &ke.result;
    let cookie_len = r.cookies.first().map_or(0, Vec::len);
    let ntp_host = r.server.clone().unwrap_or_else(|| host.clone());
    let ntp_port = r.port.unwrap_or(123);
    println!(
        "NTS-KE {host}:{port}: AEAD {} ({:?}{}), {} cookies of {cookie_len} bytes, NTP server {ntp_host}:{ntp_port}",
        r.aead.id(),
        r.aead,
        if r.compliant_128gcm_export {
            ", compliant export"
        } else {
            ""
        },
        r.cookies.len()
    );

    let addr = resolve(ntp_host.trim_end_matches('.'), ntp_port)?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| "bind address")?;
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.connect(addr)
        .map_err(|e| format!("NTP connect {addr}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut client = NtsClient::new(ke.keys, r.cookies.clone());
    let mut random = [0u8; UNIQUE_ID_LEN + NONCE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut random)
        .map_err(|_| "random number generator failed")?;
    let mut req = [0u8; 2048];
    let t1 = now_ntp();
    let (len, pending) = client
        .build_request(t1, &random, 8, &mut req)
        .map_err(|e| e.to_string())?;
    sock.send(req.get(..len).unwrap_or_default())
        .map_err(|e| format!("NTP send to {addr}: {e}"))?;
    let mut resp = [0u8; 2048];
    let n = sock
        .recv(&mut resp)
        .map_err(|e| format!("no NTP reply from {addr}: {e}"))?;
    let t4 = now_ntp();
    let v = client
        .verify_reply(resp.get(..n).unwrap_or_default(), &pending)
        .map_err(|e| format!("NTP reply from {addr} rejected: {e}"))?;
    let h = &v.header;
    let (offset, delay) = offset_delay(t1, h.receive, h.transmit, t4);
    println!(
        "NTP {addr}: authenticated, {} new cookie(s), stratum {}, offset {offset:+.6} s, delay {delay:.6} s",
        v.cookies, h.stratum
    );
    let refid = refid_text(h.stratum, h.reference_id);
    println!(
        "server: stratum {}, refid {refid}, root delay {:.6} s, root dispersion {:.6} s, leap {:?}",
        h.stratum,
        h.root_delay.seconds(),
        h.root_dispersion.seconds(),
        h.leap
    );
    Ok(())
}

/// A stratum-1 refid is a tag like `GPS` when it is printable ASCII;
/// otherwise (and at higher strata) it is shown as an IPv4 address.
fn refid_text(stratum: u8, id: [u8; 4]) -> String {
    let tag = id.split(|&b| b == 0).next().unwrap_or_default();
    if stratum <= 1 && !tag.is_empty() && tag.iter().all(u8::is_ascii_graphic) {
        String::from_utf8_lossy(tag).into_owned()
    } else {
        std::net::Ipv4Addr::from(id).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refids() {
        assert_eq!(refid_text(1, *b"GPS\0"), "GPS");
        assert_eq!(refid_text(1, [127, 127, 1, 1]), "127.127.1.1");
        assert_eq!(refid_text(2, *b"LOCL"), "76.79.67.76");
    }

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
        assert_eq!(split_host_port("::1", 4460), Ok(("::1".into(), 4460)));
        assert!(split_host_port("a:b", 4460).is_err());
        assert!(split_host_port("", 4460).is_err());
    }
}
