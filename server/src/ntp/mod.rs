//! The NTP data path: one thread per worker, each with its own
//! `SO_REUSEPORT` socket per listen address. The kernel hands each
//! datagram to the worker its source address picks (a BPF program on the
//! socket group, [`ntsd_udp::steer_by_source`]), so one client always
//! reaches one worker, and the workers share nothing mutable.
//!
//! ```text
//! bind (sockets) ─► Ntp::start ─► worker threads, each supervised:
//!   uring::run | portable::run ─► Worker::process ─► nts_proto::Server::handle
//!                              ─► ntsd_udp::SendBatch (sendmmsg)
//! ```
//!
//! Two back ends drive the same [`worker::Worker::process`]: `io_uring`
//! (one ring per worker) and `portable` (blocking `recvmmsg`/`sendmmsg`, for
//! hosts where io_uring is blocked, such as Docker's default seccomp
//! profile). Socket code is in the `ntsd-udp` crate; this plane uses the
//! key ring (`keys`), the served `SystemInfo` (`time`), `policy` and the
//! `ops` counters and health, and nothing of NTS-KE. Per packet it
//! allocates nothing, takes no lock and makes no syscall beyond the I/O.

mod exclusive;
mod interleave;
mod portable;
mod rng;
mod sockets;
mod transmit;
mod uring;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use keyrotate::RotatingKeys;

use crate::config::{Backend, Config};
use crate::ops::clients::ClientLog;
use crate::ops::counters::NtpCounters;
use crate::ops::health::{self, WorkerHealth, WorkerState};
use crate::policy::access::AccessList;
use crate::policy::ratelimit::RateLimiter;
use crate::time::source::SharedSystem;
use interleave::SavedTimestamps;
use rng::WorkerRng;
use transmit::{SealDelay, SendWait};
use worker::{Worker, STOP_POLL};

/// The NTP plane, running.
#[derive(Debug)]
pub(crate) struct Ntp {
    pub(crate) counters: Vec<Arc<NtpCounters>>,
    /// One client log per worker thread.
    pub(crate) clients: Vec<Arc<ClientLog>>,
    /// One per thread (portable runs a thread per socket).
    pub(crate) health: Vec<Arc<WorkerHealth>>,
    pub(crate) backend: Backend,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// The workers' sockets, bound before any plane starts.
#[derive(Debug)]
pub(crate) struct Sockets {
    per_worker: Vec<Vec<std::net::UdpSocket>>,
    local_addrs: Vec<SocketAddr>,
}

impl Sockets {
    /// Binds one `SO_REUSEPORT` socket per worker and `[ntp] listen`
    /// address; an address another process holds stops the start.
    pub(crate) fn bind(config: &crate::config::NtpConfig) -> Result<Sockets, String> {
        let per_worker = sockets::open_sockets(&config.listen, worker_count(config.workers))
            .map_err(|e| e.to_string())?;
        let local_addrs = per_worker
            .first()
            .map(|s| s.iter().filter_map(|u| u.local_addr().ok()).collect())
            .unwrap_or_default();
        Ok(Sockets {
            per_worker,
            local_addrs,
        })
    }

    /// The addresses bound (ephemeral ports resolved).
    pub(crate) fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }
}

/// Whether this kernel, and the seccomp profile around ntsd, run the
/// io_uring back end (Linux 6.0 or later, io_uring not blocked).
pub fn io_uring_probe() -> std::io::Result<()> {
    uring::probe()
}

/// Bytes one client costs in `[ntp] client_log_limit`: a client log
/// record and a saved timestamp.
pub(crate) const CLIENT_SLOT_BYTES: usize = ClientLog::RECORD_BYTES + SavedTimestamps::ENTRY_BYTES;

/// Clients each of `threads` worker threads keeps, out of `limit` bytes.
fn clients_per_thread(limit: usize, threads: usize) -> usize {
    limit / threads.max(1) / CLIENT_SLOT_BYTES
}

/// Number of workers for `configured` (0 = one per available core).
pub(crate) fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Ntp {
    /// Starts the workers on `sockets`. A worker whose back end fails is
    /// restarted with backoff ([`health::supervise`]); one that keeps
    /// failing sends its error to `fatal`, and ntsd exits non-zero.
    pub(crate) fn start(
        config: &Config,
        sockets: Sockets,
        keys: Arc<RotatingKeys>,
        system: SharedSystem,
        fatal: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Ntp, String> {
        let (cfg, access) = (&config.ntp, &config.access);
        let acl = Arc::new(AccessList::new(&access.allow, &access.deny));
        let limits = access
            .rate_limit
            .as_ref()
            .map(|r| (crate::policy::ratelimit::Limits::of_ntp(r), r.kod));
        let Sockets {
            per_worker: sockets,
            local_addrs,
        } = sockets;
        let n = sockets.len();
        let backend = match cfg.backend {
            // The portable back end: in every paired run of bench/compare.sh
            // it spent less CPU per reply than io_uring (README, Performance),
            // and it runs everywhere, Docker's default seccomp profile included.
            Backend::Auto => Backend::Portable,
            Backend::IoUring => {
                uring::probe().map_err(|e| {
                    format!("[ntp] backend = \"io-uring\": io_uring unavailable: {e}")
                })?;
                Backend::IoUring
            }
            Backend::Portable => Backend::Portable,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut counters = Vec::new();
        let mut healths = Vec::new();
        let mut threads = Vec::new();
        let mut clients = Vec::new();
        let thread_count = match backend {
            Backend::IoUring => n,
            _ => sockets.iter().map(Vec::len).sum(),
        };
        let slots = clients_per_thread(cfg.client_log_limit, thread_count);
        if cfg.interleaved && slots == 0 {
            tracing::warn!(
                client_log_limit = cfg.client_log_limit,
                "[ntp] interleaved = true, but client_log_limit leaves no room for saved timestamps: every reply is basic"
            );
        }
        for (i, worker_sockets) in sockets.into_iter().enumerate() {
            let c = Arc::new(NtpCounters::default());
            counters.push(c.clone());
            let mut make_worker = |name: String| -> Result<Worker, String> {
                let health = Arc::new(WorkerHealth::new(name));
                healths.push(health.clone());
                let mut rng =
                    WorkerRng::new().map_err(|_| "system random number generator failed")?;
                let limiter = limits.map(|(l, _)| RateLimiter::new(l, rng.next_u64()));
                let log = Arc::new(ClientLog::new(slots, [rng.next_u64(), rng.next_u64()]));
                clients.push(log.clone());
                Ok(Worker {
                    keys: keys.clone(),
                    system: system.clone(),
                    counters: c.clone(),
                    rng,
                    stop: stop.clone(),
                    seal_delay: SealDelay::default(),
                    send_wait: SendWait::default(),
                    health,
                    access: acl.clone(),
                    limiter,
                    kod: limits.is_some_and(|(_, kod)| kod),
                    saved: (cfg.interleaved && slots > 0).then(|| SavedTimestamps::new(slots)),
                    clients: log,
                })
            };
            match backend {
                Backend::IoUring => {
                    let w = make_worker(format!("{i}"))?;
                    let fatal = fatal.clone();
                    threads.push(spawn(format!("ntp-uring-{i}"), move || {
                        supervised(w, fatal, |w| uring::run(w, &worker_sockets))
                    })?);
                }
                _ => {
                    // recvmmsg blocks on one socket, so each socket gets a thread.
                    for (j, sock) in worker_sockets.into_iter().enumerate() {
                        let w = make_worker(format!("{i}.{j}"))?;
                        let fatal = fatal.clone();
                        threads.push(spawn(format!("ntp-mmsg-{i}.{j}"), move || {
                            supervised(w, fatal, |w| portable::run(w, &sock))
                        })?);
                    }
                }
            }
        }
        // Ready (and READY=1 to systemd) means serving: wait, bounded, until
        // every worker has set its back end up (or failed and is restarting).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while healths.iter().any(|h| h.state() == WorkerState::Starting)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        tracing::info!(
            workers = n,
            ?backend,
            addrs = ?local_addrs,
            interleaved = cfg.interleaved && slots > 0,
            clients_per_thread = slots,
            "NTP workers started"
        );
        Ok(Ntp {
            counters,
            clients,
            health: healths,
            backend,
            threads,
            stop,
        })
    }

    /// Signals every worker to stop and waits for them.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A worker thread's body: its serve loop under [`health::supervise`].
fn supervised(
    mut worker: Worker,
    fatal: tokio::sync::mpsc::UnboundedSender<String>,
    mut run: impl FnMut(&mut Worker) -> Result<(), String>,
) {
    let health = worker.health.clone();
    let stop = worker.stop.clone();
    let stopping = || stop.load(Ordering::Relaxed);
    let sleep = |d: std::time::Duration| {
        // In steps, so a shutdown during the backoff is not held up.
        let until = std::time::Instant::now() + d;
        while std::time::Instant::now() < until && !stopping() {
            std::thread::sleep(STOP_POLL);
        }
    };
    if let Err(e) = health::supervise(&health, stopping, sleep, || run(&mut worker)) {
        let _ = fatal.send(format!("NTP worker {}: {e}", health.name));
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| format!("cannot start NTP worker thread: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README and config.toml.example give these figures.
    #[test]
    fn a_client_slot_costs_88_bytes() {
        assert_eq!(CLIENT_SLOT_BYTES, 88);
        let default = crate::config::NtpConfig::default().client_log_limit;
        assert_eq!(clients_per_thread(default, 1), 47_662);
        assert_eq!(clients_per_thread(100 << 20, 1), 1_191_563);
    }
}
