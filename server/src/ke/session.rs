//! One NTS-KE session (RFC 8915, section 4): TLS 1.3 with ALPN
//! `ntske/1`, one request, one response with the cookies, close_notify.

use std::sync::Arc;
use std::time::Duration;

use keyrotate::RotatingKeys;
use nts_proto::cookie::{seal_cookie, MAX_COOKIE_LEN};
use nts_proto::ke::{
    exporter_aead, exporter_context, KeRequest, KeRequestError, KeResponse, RequestParser,
    ALPN_NTSKE, EXPORTER_LABEL, PROTOCOL_NTPV4,
};
use nts_proto::{AeadAlgorithm, AeadKey, CookieKeys, SessionKeys};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::{certs, limits};
use crate::ops::counters::{KeCounters, KeEvent};

/// Cookies handed out per session (RFC 8915, section 4: eight is typical).
pub(super) const COOKIES_PER_SESSION: usize = 8;
/// Largest request accepted. RFC 8915 asks servers to accept at least 1024
/// bytes; real requests are under 100.
pub(super) const MAX_REQUEST: usize = 16 * 1024;

/// What every KE session needs, shared by the accept loops.
pub(super) struct KeContext {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) keys: Arc<RotatingKeys>,
    pub(crate) counters: Arc<KeCounters>,
    pub(crate) ntp_server: Option<String>,
    /// Port record value, when one must be sent.
    pub(crate) ntp_port: Option<u16>,
    pub(crate) timeout: Duration,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) rng: SystemRandom,
    /// `[nts_ke] allow`/`deny`, else `[access]`: checked before TLS.
    pub(crate) access: crate::policy::access::AccessList,
    /// Open connections per address.
    pub(crate) per_address: limits::AddressSlots,
    /// Sessions per address and time, when configured.
    pub(crate) session_rate: Option<limits::SessionRate>,
    /// The certificates: without a usable one, connections are refused.
    pub(crate) certs: Arc<certs::Certificates>,
}

impl std::fmt::Debug for KeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeContext")
            .field("ntp_server", &self.ntp_server)
            .field("ntp_port", &self.ntp_port)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How a KE session ended.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outcome {
    Issued { aead: AeadAlgorithm, cookies: usize },
    Failed(KeEvent),
}

pub(super) async fn session(ctx: &KeContext, stream: TcpStream) -> Outcome {
    match exchange(ctx, stream).await {
        Ok((aead, cookies)) => Outcome::Issued { aead, cookies },
        Err(event) => Outcome::Failed(event),
    }
}

/// One KE session: the AEAD chosen and the cookies issued, or why none.
async fn exchange(ctx: &KeContext, stream: TcpStream) -> Result<(AeadAlgorithm, usize), KeEvent> {
    let _ = stream.set_nodelay(true);
    let mut tls = match ctx.acceptor.accept(stream).await {
        Ok(t) => t,
        Err(_) => return Err(KeEvent::TlsError),
    };
    // rustls refuses a client whose ALPN list lacks ntske/1; a client that
    // sends no ALPN at all must be refused here (RFC 8915, section 4).
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_NTSKE) {
        let _ = tls.shutdown().await;
        return Err(KeEvent::NoAlpn);
    }
    // Each record is decoded once, as it completes: a client trickling
    // tiny TLS records costs work in proportion to its bytes.
    let mut parser = RequestParser::new();
    let request = loop {
        let mut chunk = [0u8; 1024];
        let n = match tls.read(&mut chunk).await {
            Ok(n) => n,
            Err(_) => return Err(KeEvent::TlsError),
        };
        if n == 0 {
            // The client closed before End of Message.
            break Err(KeRequestError::BadRequest("request incomplete"));
        }
        let room = MAX_REQUEST.saturating_sub(parser.len());
        let bytes = chunk.get(..n.min(room)).unwrap_or_default();
        match parser.feed(bytes) {
            Err(KeRequestError::Incomplete) if parser.len() < MAX_REQUEST => continue,
            Err(KeRequestError::Incomplete) => {
                break Err(KeRequestError::BadRequest("request too large"))
            }
            other => break other,
        }
    };
    let (response, result) = match request {
        Err(e) => {
            let event = match e {
                KeRequestError::UnrecognizedCritical(_) => KeEvent::UnrecognizedCritical,
                _ => KeEvent::BadRequest,
            };
            (KeResponse::error(e.error_code()), Err(event))
        }
        Ok(req) => respond(ctx, &req, tls.get_ref().1),
    };
    // One write: the response fits one TLS record, which NTPsec needs
    // (it reads the whole response in a single 2048-byte read).
    if tls.write_all(&response).await.is_err() || tls.shutdown().await.is_err() {
        return Err(KeEvent::TlsError);
    }
    result
}

/// The response to a parsed request, and the AEAD and cookie count issued
/// (or why nothing was).
type Response = (Vec<u8>, Result<(AeadAlgorithm, usize), KeEvent>);

fn respond(ctx: &KeContext, req: &KeRequest, conn: &rustls::ServerConnection) -> Response {
    if !req.wants_ntpv4() {
        return (
            KeResponse::default().encode(),
            Err(KeEvent::NoCommonProtocol),
        );
    }
    let Some(aead) = req.select_aead(&AeadAlgorithm::ALL) else {
        let resp = KeResponse {
            protocol: Some(PROTOCOL_NTPV4),
            ..Default::default()
        };
        return (resp.encode(), Err(KeEvent::NoCommonAead));
    };
    let compliant = req.echoes_compliant_export(aead);
    match make_cookies(ctx, aead, exporter_aead(aead, compliant), conn) {
        Ok(cookies) => {
            let count = cookies.len();
            let resp = KeResponse {
                protocol: Some(PROTOCOL_NTPV4),
                aead: Some(aead),
                cookies,
                server: ctx.ntp_server.clone(),
                port: ctx.ntp_port,
                compliant_128gcm_export: compliant,
            };
            (resp.encode(), Ok((aead, count)))
        }
        Err(e) => {
            // Not remote input: a failing RNG or TLS exporter on our side.
            tracing::warn!(error = %e, "NTS-KE internal error");
            (
                KeResponse::error(nts_proto::ke::error_code::INTERNAL_SERVER_ERROR),
                Err(KeEvent::InternalError),
            )
        }
    }
}

/// Exports the session keys (RFC 8915, section 5.1) and seals the cookies.
/// `context_aead` is the id the exporter context names
/// ([`nts_proto::ke::exporter_aead`]); the keys are `aead`'s length.
fn make_cookies(
    ctx: &KeContext,
    aead: AeadAlgorithm,
    context_aead: AeadAlgorithm,
    conn: &rustls::ServerConnection,
) -> Result<Vec<Vec<u8>>, String> {
    let export = |s2c: bool| -> Result<AeadKey, String> {
        let mut buf = zeroize::Zeroizing::new([0u8; nts_proto::aead::MAX_KEY_LEN]);
        let key = buf.get_mut(..aead.key_len()).ok_or("key length")?;
        conn.export_keying_material(
            &mut *key,
            EXPORTER_LABEL,
            Some(&exporter_context(context_aead, s2c)),
        )
        .map_err(|e| format!("TLS exporter: {e}"))?;
        AeadKey::new(aead, key).ok_or_else(|| "key length".into())
    };
    let keys = SessionKeys {
        c2s: export(false)?,
        s2c: export(true)?,
    };
    let ring = ctx.keys.load();
    let (id, master) = ring.sealing_key();
    let mut cookies = Vec::with_capacity(COOKIES_PER_SESSION);
    for _ in 0..COOKIES_PER_SESSION {
        let mut nonce = [0u8; nts_proto::cookie::COOKIE_NONCE_LEN];
        ctx.rng
            .fill(&mut nonce)
            .map_err(|_| "random number generator failed")?;
        let mut out = [0u8; MAX_COOKIE_LEN];
        let n = seal_cookie(id, master, &nonce, &keys, &mut out).map_err(|e| e.to_string())?;
        cookies.push(out.get(..n).unwrap_or_default().to_vec());
    }
    Ok(cookies)
}
