//! The NTS-KE listeners: binding, and the accept loop that runs every
//! check able to refuse a connection (access list, session rate,
//! certificate, connection caps) before any TLS work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::session::{session, KeContext, Outcome};
use crate::ops::counters::KeEvent;
use crate::system::listen::SharedEphemeralPort;

/// How long the accept loop pauses when the process is out of descriptors
/// or memory, and how often such a pause is logged.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often, at most, refusals for want of a certificate are logged.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(60);

/// Accepts connections on `listener` until `stop` fires. Every check that
/// can refuse a connection (access list, session rate, the global cap) runs
/// before TLS; an address at its own cap loses its oldest connection.
/// Remote input never logs above `debug`.
pub(super) async fn serve(
    listener: TcpListener,
    ctx: Arc<KeContext>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut next_id = 0u64;
    let mut last_logged: Option<std::time::Instant> = None;
    let mut failures = 0u64;
    let mut last_down_log: Option<std::time::Instant> = None;
    let mut refused_down = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_failed(&e, &mut last_logged, &mut failures).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        ctx.counters.add(KeEvent::Accepted);
        let ip = peer.ip();
        if !ctx.access.permits(ip) {
            ctx.counters.add(KeEvent::AccessDenied);
            continue;
        }
        if ctx.session_rate.as_ref().is_some_and(|r| !r.allows(ip)) {
            ctx.counters.add(KeEvent::RateLimited);
            continue;
        }
        if !ctx.certs.usable() {
            // NTS-KE is down; the certificate watcher logs why. Closed
            // before TLS, so a client fails at once and tries elsewhere.
            ctx.counters.add(KeEvent::NoCertificate);
            refused_down += 1;
            if last_down_log.is_none_or(|t| t.elapsed() >= DOWN_LOG_EVERY) {
                tracing::warn!(
                    refused = refused_down,
                    reason = %ctx.certs.problem().unwrap_or_default(),
                    "NTS-KE refused connections: no usable certificate (NTP is served; NTS-KE resumes once a valid certificate is in place)"
                );
                last_down_log = Some(std::time::Instant::now());
                refused_down = 0;
            }
            continue;
        }
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            ctx.counters.add(KeEvent::Busy);
            continue;
        };
        next_id += 1;
        let id = next_id;
        let task_ctx = ctx.clone();
        let accepted = std::time::Instant::now();
        let evicted = ctx.per_address.admit(ip, id, || {
            tokio::spawn(async move {
                let ctx = task_ctx;
                let outcome = match tokio::time::timeout(ctx.timeout, session(&ctx, stream)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::Failed(KeEvent::Timeout),
                };
                match outcome {
                    Outcome::Issued { aead, cookies } => ctx.counters.session(aead, cookies),
                    Outcome::Failed(event) => ctx.counters.add(event),
                }
                ctx.counters
                    .duration
                    .observe(accepted.elapsed().as_secs_f64());
                tracing::debug!(%peer, ?outcome, "NTS-KE session ended");
                ctx.per_address.remove(ip, id);
                drop(permit);
            })
            .abort_handle()
        });
        if evicted {
            // The address's oldest connection was closed to make room.
            ctx.counters.add(KeEvent::Evicted);
        }
    }
}

/// An `accept` that failed: out of descriptors or memory pauses the loop
/// (logged once per [`ACCEPT_LOG_EVERY`], with the count); anything else
/// (a connection reset before it was accepted) is the client's business.
async fn accept_failed(
    e: &std::io::Error,
    last_logged: &mut Option<std::time::Instant>,
    failures: &mut u64,
) {
    let exhausted = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    );
    if !exhausted {
        tracing::debug!(error = %e, "NTS-KE accept failed");
        return;
    }
    *failures += 1;
    if last_logged.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
        tracing::warn!(error = %e, failures = *failures, "NTS-KE accept failed: out of descriptors or memory; pausing, still serving the connections open (raise LimitNOFILE / ulimit -n, or lower [nts_ke] max_connections)");
        *last_logged = Some(std::time::Instant::now());
        *failures = 0;
    }
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

/// Binds the KE listeners; a port of 0 takes an ephemeral port.
pub(crate) fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::new();
    let mut port = SharedEphemeralPort::default();
    for &configured in addrs {
        let addr = port.resolve(configured);
        let listener = match listen_on(addr) {
            Ok(l) => l,
            Err(e) if addrs.len() > 1 && crate::system::listen::ipv6_missing(addr, &e) => {
                crate::system::listen::warn_ipv6_missing("[nts_ke] listen", addr, &e);
                continue;
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot bind NTS-KE to {addr}: {e}"),
                ))
            }
        };
        port.learn(addr, listener.local_addr()?);
        out.push(listener);
    }
    if out.is_empty() {
        return Err(std::io::Error::other(
            "[nts_ke] listen: no address could be bound",
        ));
    }
    Ok(out)
}

fn listen_on(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
