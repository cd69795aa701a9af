//! The NTS-KE front end: TLS 1.3 over TCP, one request, one response,
//! close_notify (RFC 8915, section 4), on the tokio runtime, off the NTP
//! workers' cores.
//!
//! ```text
//! listen::serve (accept; access, session rate, certificate, caps: before TLS)
//!   └─ session::session ─► TLS (tls, certs) ─► nts_proto::ke::RequestParser
//!        ─► cookies sealed with the current key ─► KeResponse ─► close_notify
//! certs::watch: SIGHUP or a changed file ─► reload (a bad one keeps the old)
//! ```
//!
//! Uses the key ring (`keys`), `policy` (access lists, rate limits), the
//! `ops` counters and health, and nothing of the NTP data path but the
//! port it was bound to.

pub(crate) mod certs;
pub(crate) mod limits;
mod listen;
mod session;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use keyrotate::RotatingKeys;
use ring::rand::SystemRandom;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

pub(crate) use listen::bind;

use crate::config::Config;
use crate::ops::counters::KeCounters;
use crate::ops::health::Health;
use certs::Certificates;
use session::KeContext;

/// What NTS-KE takes from the planes started before it.
#[derive(Debug)]
pub(crate) struct Links {
    pub(crate) keys: Arc<RotatingKeys>,
    pub(crate) certs: Arc<Certificates>,
    pub(crate) health: Arc<Health>,
    /// The port the NTP workers were bound to.
    pub(crate) ntp_port: u16,
    /// The descriptor limit in force (`RLIMIT_NOFILE`).
    pub(crate) nofile: u64,
}

/// The NTS-KE plane, running.
#[derive(Debug)]
pub(crate) struct Ke {
    pub(crate) counters: Arc<KeCounters>,
    /// The connection cap in force (`max_connections`, or less to fit the
    /// descriptor limit).
    pub(crate) max_connections: usize,
    /// Permits for open connections: `max_connections` minus those open.
    pub(crate) slots: Arc<Semaphore>,
    /// Addresses actually bound (ephemeral ports resolved).
    pub(crate) local_addrs: Vec<SocketAddr>,
    /// The Port record sent, if any.
    pub(crate) port_record: Option<u16>,
    tasks: Vec<JoinHandle<()>>,
}

impl Ke {
    /// Serves NTS-KE on `listeners` until `stop` fires, and watches the
    /// certificates (`hup`: reload now).
    pub(crate) fn start(
        config: &Config,
        listeners: Vec<std::net::TcpListener>,
        links: Links,
        hup: tokio::signal::unix::Signal,
        stop: watch::Receiver<bool>,
    ) -> Result<Ke, String> {
        let cfg = &config.nts_ke;
        let Links {
            keys,
            certs,
            health,
            ntp_port,
            nofile,
        } = links;
        let tls = tls::server_config(certs.clone()).map_err(|e| format!("[nts_ke] {e}"))?;
        // RFC 8915, 4.1.7: clients use port 123 unless told otherwise, and
        // every client we tested learns the port only from this record.
        let port_record = cfg.ntp_port.or((ntp_port != 123).then_some(ntp_port));
        // Every connection is a descriptor: keep the cap under the limit,
        // with room for the sockets and files ntsd holds (counted now, plus
        // the metrics connections and a margin).
        let reserved =
            crate::system::limits::open_fds() + crate::ops::http::MAX_CONNECTIONS as u64 + 32;
        let max_connections =
            crate::system::limits::fit_connections(cfg.max_connections, nofile, reserved)?;
        let slots = Arc::new(Semaphore::new(max_connections));
        let counters = Arc::new(KeCounters::default());
        let ctx = Arc::new(KeContext {
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
            keys,
            counters: counters.clone(),
            ntp_server: cfg.ntp_server.clone(),
            ntp_port: port_record,
            timeout: cfg.timeout.0,
            connections: slots.clone(),
            rng: SystemRandom::new(),
            per_address: limits::AddressSlots::new(cfg.max_connections_per_address),
            session_rate: cfg.rate_limit.as_ref().map(|r| {
                limits::SessionRate::new(
                    crate::policy::ratelimit::Limits::of_ke(r),
                    u64::from(std::process::id()),
                )
            }),
            access: crate::policy::access::AccessList::new(
                cfg.allow.as_deref().unwrap_or(&config.access.allow),
                cfg.deny.as_deref().unwrap_or(&config.access.deny),
            ),
            certs: certs.clone(),
        });
        let mut local_addrs = Vec::new();
        let mut tasks = Vec::new();
        for l in listeners {
            local_addrs.push(l.local_addr().map_err(|e| e.to_string())?);
            let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
            let alive = health.ke_listener();
            let (ctx, stop) = (ctx.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                listen::serve(l, ctx, stop).await;
                drop(alive);
            }));
        }
        tasks.push(tokio::spawn(certs::watch(certs, hup, stop)));
        Ok(Ke {
            counters,
            max_connections,
            slots,
            local_addrs,
            port_record,
            tasks,
        })
    }

    /// Waits for the listeners and the certificate watcher, which `stop`
    /// ended.
    pub(crate) async fn stop(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
