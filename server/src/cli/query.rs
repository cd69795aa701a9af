//! `ntsd query`: one NTS-KE and one authenticated NTP exchange, printed.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use nts_client::ke::resolve;
use nts_client::{key_exchange, split_host_port, DEFAULT_KE_PORT};
use nts_proto::client::{offset_delay, NtsClient, NONCE_LEN, UNIQUE_ID_LEN};
use nts_proto::AeadAlgorithm;
use ring::rand::SecureRandom;

use crate::time::clock::now_ntp;

/// `ntsd query`: NTS-KE offering `aead_ids` (every supported AEAD when
/// empty), then one authenticated exchange.
pub fn run(
    target: &str,
    ca: Option<&Path>,
    aead_ids: &[u16],
    timeout: Duration,
) -> Result<(), String> {
    let (host, port) = split_host_port(target, DEFAULT_KE_PORT)?;
    let config = nts_client::client_config(ca)?;
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
}
