//! `ntsd run`: start every part, wait for SIGTERM or SIGINT, stop cleanly.
//!
//! ```text
//! main thread: tokio runtime ── NTS-KE listeners, metrics, key rotation, time source
//! NTP worker threads (own io_uring or recvmmsg loop each) ── Server::handle
//! shared: Arc<RotatingKeys> (ArcSwap inside), Arc<ArcSwap<SystemInfo>>
//! ```

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use arc_swap::ArcSwap;
use keyrotate::RotatingKeys;
use ring::rand::SystemRandom;
use tokio::sync::{watch, Semaphore};

use crate::clock::unix_secs;
use crate::config::Config;
use crate::ke::certs::Certificates;
use crate::ke::{self, KeContext};
use crate::ops::counters::{KeCounters, KeyCounters};
use crate::ops::health::Health;
use crate::ops::http::Endpoint;
use crate::ops::metrics::Sources;
use crate::ops::notify;
use crate::time_source::{self, TimeState};

/// Addresses the running server actually bound (ephemeral ports resolved).
#[derive(Debug, Clone)]
pub struct Bound {
    pub ntp: Vec<std::net::SocketAddr>,
    pub ke: Vec<std::net::SocketAddr>,
}

/// Runs the server until SIGTERM/SIGINT or until `extra_stop` resolves.
/// `on_ready` is called once everything is bound.
pub fn run(config: Config, on_ready: impl FnOnce(&Bound)) -> Result<(), String> {
    let ke_threads = match config.nts_ke.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ke_threads)
        .thread_name("ntsd-ke")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    runtime.block_on(serve(config, on_ready))
}

/// The signals ntsd handles, registered before anything slow (a signal
/// that arrives during start-up is acted on once start-up is done, never
/// fatal).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Self, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let on = |kind: SignalKind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
        let signals = Signals {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
            usr1: on(SignalKind::user_defined1())?,
        };
        // Held back since `main` (see `sys::block_signals`): from here on
        // they reach the handlers above.
        crate::sys::unblock_signals();
        Ok(signals)
    }
}

async fn serve(config: Config, on_ready: impl FnOnce(&Bound)) -> Result<(), String> {
    let Signals {
        mut term,
        mut int,
        hup,
        usr1,
    } = Signals::register()?;
    // Before any socket: a many-core host needs more than the usual soft
    // limit of 1,024 descriptors for its workers' sockets.
    let nofile = crate::sys::raise_nofile();
    // A certificate problem takes NTS-KE down, never the server.
    let certs = Certificates::load(config.nts_ke.certificates());
    let tls = crate::tls::server_config(certs.clone()).map_err(|e| format!("[nts_ke] {e}"))?;
    // The user's supplementary groups are kept, as initgroups(3) gives
    // them: certificate files are often readable through one (ssl-cert).
    let run_as = crate::sys::run_as(&config.server)?;
    let owner = run_as.as_ref().map(crate::sys::RunAs::owner);
    // Locks the key directory: a second ntsd on it stops here, before it
    // touches a file.
    let keys = Arc::new(crate::keys::open(&config.keys, unix_secs(), owner)?);
    let _pid_file = match config.keys.state_dir() {
        Some(dir) => Some(crate::keys::write_pid(dir, owner)?),
        None => None,
    };
    let time_state = TimeState::new(&config.time)?;
    let system = Arc::new(ArcSwap::from_pointee(time_state.sample()));

    let ke_listeners = ke::bind(&config.nts_ke.listen).map_err(|e| e.to_string())?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|e| format!("[metrics] listen: cannot bind {addr}: {e}"))?,
        ),
        None => None,
    };

    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::unbounded_channel();
    let workers = crate::ntp::start(
        &config.ntp,
        &config.access,
        keys.clone(),
        system.clone(),
        fatal_tx,
    )?;
    let ntp_port = workers.local_addrs.first().map_or(123, |a| a.port());
    // RFC 8915, 4.1.7: clients use port 123 unless told otherwise, and every
    // client we tested learns the port only from this record.
    let port_record = config
        .nts_ke
        .ntp_port
        .or((ntp_port != 123).then_some(ntp_port));

    let health = Arc::new(Health::new(
        workers.health.clone(),
        ke_listeners.len(),
        system.clone(),
        Some(certs.clone()),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let ke_counters = Arc::new(KeCounters::default());
    // Every NTS-KE connection is a descriptor: keep the cap under the
    // limit, with room for the sockets and files ntsd holds (counted now,
    // plus the metrics connections and a margin).
    let reserved = crate::sys::open_fds() + crate::ops::http::MAX_CONNECTIONS as u64 + 32;
    let max_connections =
        crate::sys::fit_connections(config.nts_ke.max_connections, nofile, reserved)?;
    let ke_slots = Arc::new(Semaphore::new(max_connections));
    let ctx = Arc::new(KeContext {
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        keys: keys.clone(),
        counters: ke_counters.clone(),
        ntp_server: config.nts_ke.ntp_server.clone(),
        ntp_port: port_record,
        timeout: config.nts_ke.timeout.0,
        connections: ke_slots.clone(),
        rng: SystemRandom::new(),
        per_address: crate::ke::limits::AddressSlots::new(
            config.nts_ke.max_connections_per_address,
        ),
        session_rate: config.nts_ke.rate_limit.as_ref().map(|r| {
            crate::ke::limits::SessionRate::new(r.limits(), u64::from(std::process::id()))
        }),
        access: crate::ntp::access::AccessList::new(
            config
                .nts_ke
                .allow
                .as_deref()
                .unwrap_or(&config.access.allow),
            config.nts_ke.deny.as_deref().unwrap_or(&config.access.deny),
        ),
        certs: certs.clone(),
    });
    let mut ke_addrs = Vec::new();
    let mut tasks = Vec::new();
    for l in ke_listeners {
        ke_addrs.push(l.local_addr().map_err(|e| e.to_string())?);
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
        let alive = health.ke_listener();
        let ctx = ctx.clone();
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            ke::serve(l, ctx, stop).await;
            drop(alive);
        }));
    }
    let key_events = Arc::new(KeyCounters::default());
    let time_events = Arc::new(time_source::TimeCounters::default());
    let sources = Sources {
        ntp: workers.counters.clone(),
        ke: ke_counters,
        ke_max_connections: max_connections,
        ke_open: ke_slots,
        keys: keys.clone(),
        key_events: key_events.clone(),
        time_events: time_events.clone(),
        upstream: config.time.source == crate::config::TimeSource::Upstream,
        system: system.clone(),
        health: health.clone(),
        certs: certs.clone(),
        backend: match workers.backend {
            crate::config::Backend::IoUring => "io-uring",
            _ => "portable",
        },
    };
    let registry = crate::ops::metrics::registry(sources)?;
    if let Some(l) = metrics_listener {
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
        tracing::info!(addr = ?l.local_addr().ok(), "metrics endpoint listening");
        let endpoint = Arc::new(Endpoint {
            registry,
            health: health.clone(),
        });
        tasks.push(tokio::spawn(crate::ops::http::serve(
            l,
            endpoint,
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::ke::certs::watch(
        certs.clone(),
        hup,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(time_source::run(
        time_state,
        system,
        time_events,
        stop_rx.clone(),
    )));
    report_start(&keys, &key_events);
    let keys_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keys_thread = follow_clock(keys.clone(), key_events.clone(), keys_stop.clone())?;
    tasks.push(tokio::spawn(forced_rotations(
        keys.clone(),
        key_events,
        usr1,
        stop_rx.clone(),
    )));

    let bound = Bound {
        ntp: workers.local_addrs.clone(),
        ke: ke_addrs,
    };
    if let Some(crate::sys::RunAs { uid, gid, groups }) = &run_as {
        let (uid, gid) = (*uid, *gid);
        // Everything is bound and open: from here on ntsd needs no privilege.
        crate::sys::drop_privileges(uid, gid, groups)?;
        for (key, path) in config.files() {
            if !crate::sys::readable_by(&path, uid, groups) {
                tracing::warn!(%key, path = %path.display(), uid, ?groups, "not readable by the user ntsd runs as: certificate reloads will be refused until it is (e.g. group-readable by one of that user's groups)");
            }
        }
        tracing::info!(uid, gid, ?groups, "privileges dropped");
    }
    health.set_started();
    tracing::info!(ntp = ?bound.ntp, nts_ke = ?bound.ke, port_record = ?port_record, nts_ke_up = certs.usable(), "ntsd ready");
    notify::ready(&format!(
        "serving NTP on {:?}, NTS-KE on {:?}{}; key {}",
        bound.ntp,
        bound.ke,
        match certs.usable() {
            true => "",
            false => " (down: no usable certificate)",
        },
        keys.load().current_id()
    ));
    on_ready(&bound);

    let outcome = tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
        Some(why) = fatal_rx.recv() => Err(why),
    };
    match &outcome {
        Ok(()) => tracing::info!("shutting down"),
        Err(why) => tracing::error!(error = %why, "shutting down after a fatal error"),
    }
    notify::stopping();
    let _ = stop_tx.send(true);
    keys_stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let _ = tokio::task::spawn_blocking(move || keys_thread.join()).await;
    tokio::task::spawn_blocking(move || workers.stop())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    outcome
}

/// How far the wall clock may move against the monotonic clock between two
/// checks before it counts as a step.
const STEP_THRESHOLD: f64 = 1.0;

/// The kernel's monotonic clock, read through the vDSO by rustix rather
/// than through libc: what the step detection compares the wall clock
/// with must not move with it, even under a preloaded time shim such as
/// libfaketime (which shifts libc's CLOCK_MONOTONIC too, by default).
fn kernel_monotonic() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    std::time::Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Keeps the master keys on the epoch of the wall clock, on a thread of
/// its own. Checked just after every wall-clock second, so a rotation
/// happens on time and a clock step (chronyd stepping the clock at boot, a
/// VM restored from a snapshot) moves the keys within a second, in either
/// direction. A step is told apart from a late check by comparing the wall
/// clock's progress with the kernel's monotonic clock; each is logged once
/// and counted. A ring that cannot be saved leaves the old ring in force
/// and is retried every 10 s.
///
/// A thread with `sleep` (a relative nanosleep) rather than a tokio timer:
/// timers follow the process's monotonic clock, and a clock that a shim
/// steps backwards would hold them back for as long as the step.
fn follow_clock(
    keys: Arc<RotatingKeys>,
    events: Arc<KeyCounters>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("ntsd-keys".into())
        .spawn(move || follow_clock_loop(&keys, &events, &stop))
        .map_err(|e| format!("cannot start the key rotation thread: {e}"))
}

fn follow_clock_loop(
    keys: &RotatingKeys,
    events: &KeyCounters,
    stop: &std::sync::atomic::AtomicBool,
) {
    use keyrotate::Movement;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    const RETRY: Duration = Duration::from_secs(10);
    const STEP: Duration = Duration::from_millis(100);
    let wall = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    };
    let mut last = (wall(), kernel_monotonic());
    let mut retry_at: Option<Duration> = None;
    loop {
        // To just after the next wall-clock second, in short sleeps so that
        // a stop is seen at once.
        let into_second = u64::from(wall().subsec_millis());
        let mut left = Duration::from_millis(1_000 - into_second.min(999) + 5);
        while !left.is_zero() {
            if stop.load(Relaxed) {
                return;
            }
            let nap = left.min(STEP);
            std::thread::sleep(nap);
            left -= nap;
        }
        let (now, mono) = (wall(), kernel_monotonic());
        let step =
            (now.as_secs_f64() - last.0.as_secs_f64()) - mono.saturating_sub(last.1).as_secs_f64();
        last = (now, mono);
        let stepped = step.abs() >= STEP_THRESHOLD;
        if stepped {
            events.clock_steps.fetch_add(1, Relaxed);
        }
        if retry_at.is_some_and(|t| mono < t) {
            if stepped {
                tracing::warn!(
                    seconds = step,
                    "wall clock stepped; the key ring follows once it can be saved"
                );
            }
            continue;
        }
        let before = keys.load().current_id();
        match keys.follow(now.as_secs()) {
            Ok(m) => {
                retry_at = None;
                match m {
                    Movement::Unchanged if stepped => tracing::warn!(
                        seconds = step,
                        current = before,
                        "wall clock stepped; the key epoch is unchanged"
                    ),
                    Movement::Unchanged => {}
                    Movement::Rotated { to } if !stepped => {
                        events.rotations.fetch_add(1, Relaxed);
                        tracing::info!(current = to, "master key rotated");
                    }
                    Movement::Rotated { to } | Movement::Jumped { to, .. } if stepped => {
                        events.step_rotations.fetch_add(1, Relaxed);
                        tracing::warn!(
                            seconds = step,
                            from = before,
                            current = to,
                            kept_open = !keys.is_derived(),
                            "wall clock stepped: master keys moved to the epoch of the clock"
                        );
                    }
                    Movement::Rotated { to } | Movement::Jumped { to, .. } => {
                        events.rotations.fetch_add(1, Relaxed);
                        tracing::info!(
                            from = before,
                            current = to,
                            "master keys rotated over several epochs (the check came late)"
                        );
                    }
                }
            }
            Err(e) => {
                events.failures.fetch_add(1, Relaxed);
                retry_at = Some(mono + RETRY);
                tracing::error!(error = %e, stepped, "master key rotation failed; the current key stays in force, retrying in 10 s");
            }
        }
    }
}

/// Logs and counts a key ring that was loaded ahead of the clock: the clock
/// stepped back since the file was written (or was ahead then).
fn report_start(keys: &RotatingKeys, events: &KeyCounters) {
    if let keyrotate::Movement::Jumped { from, to } = keys.started() {
        if to < from {
            events.clock_steps.fetch_add(1, Relaxed);
            tracing::warn!(
                file_current = from,
                current = to,
                "the key file's current key is ahead of the clock (the clock stepped back, or was ahead when the file was written): sealing with the key of the clock's epoch, the file's keys still open their cookies"
            );
        }
    }
}

/// `ntsd keys rotate` (or `kill -USR1`): replace the sealing key now.
async fn forced_rotations(
    keys: Arc<RotatingKeys>,
    events: Arc<KeyCounters>,
    mut usr1: tokio::signal::unix::Signal,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = usr1.recv() => {}
            _ = stop.changed() => return,
        }
        match keys.force_rotate(unix_secs()) {
            Ok(id) => {
                events.forced_at(unix_secs());
                tracing::warn!(current = id, "master key rotated by request (SIGUSR1)");
            }
            Err(e) => {
                events.failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "requested key rotation failed");
            }
        }
    }
}
