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
use crate::metrics::Registry;
use crate::nts_ke::{self, KeContext};
use crate::stats::{KeCounters, KeyCounters};
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

async fn serve(config: Config, on_ready: impl FnOnce(&Bound)) -> Result<(), String> {
    let keys = Arc::new(crate::keys::open(&config.keys, unix_secs())?);
    let time_state = TimeState::new(&config.time)?;
    let system = Arc::new(ArcSwap::from_pointee(time_state.sample()));

    let tls =
        crate::tls::server_config(&config.nts_ke.certificate_chain, &config.nts_ke.private_key)
            .map_err(|e| format!("[nts_ke] {e}"))?;
    let ke_listeners = nts_ke::bind(&config.nts_ke.listen).map_err(|e| e.to_string())?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|e| format!("[metrics] listen: cannot bind {addr}: {e}"))?,
        ),
        None => None,
    };

    let workers = crate::ntp::start(&config.ntp, keys.clone(), system.clone())?;
    let ntp_port = workers.local_addrs.first().map_or(123, |a| a.port());
    // RFC 8915, 4.1.7: clients use port 123 unless told otherwise, and every
    // client we tested learns the port only from this record.
    let port_record = config
        .nts_ke
        .ntp_port
        .or((ntp_port != 123).then_some(ntp_port));

    let (stop_tx, stop_rx) = watch::channel(false);
    let ke_counters = Arc::new(KeCounters::default());
    let ctx = Arc::new(KeContext {
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        keys: keys.clone(),
        counters: ke_counters.clone(),
        ntp_server: config.nts_ke.ntp_server.clone(),
        ntp_port: port_record,
        timeout: config.nts_ke.timeout.0,
        connections: Arc::new(Semaphore::new(config.nts_ke.max_connections)),
        rng: SystemRandom::new(),
    });
    let mut ke_addrs = Vec::new();
    let mut tasks = Vec::new();
    for l in ke_listeners {
        ke_addrs.push(l.local_addr().map_err(|e| e.to_string())?);
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(nts_ke::serve(l, ctx.clone(), stop_rx.clone())));
    }
    let key_events = Arc::new(KeyCounters::default());
    let time_events = Arc::new(time_source::TimeCounters::default());
    let registry = Registry {
        ntp: workers.counters.clone(),
        ke: ke_counters,
        keys: keys.clone(),
        key_events: key_events.clone(),
        time_events: time_events.clone(),
        system: system.clone(),
        backend: match workers.backend {
            crate::config::Backend::IoUring => "io-uring",
            _ => "portable",
        },
    };
    if let Some(l) = metrics_listener {
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
        tracing::info!(addr = ?l.local_addr().ok(), "metrics endpoint listening");
        tasks.push(tokio::spawn(crate::metrics::serve(
            l,
            registry,
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(time_source::run(
        time_state,
        system,
        time_events,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(rotate_keys(
        keys.clone(),
        key_events.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(forced_rotations(
        keys,
        key_events,
        stop_rx.clone(),
    )?));
    let _pid_file = match &config.keys.dump_dir {
        Some(dir) => Some(crate::keys::write_pid(dir)?),
        None => None,
    };

    let bound = Bound {
        ntp: workers.local_addrs.clone(),
        ke: ke_addrs,
    };
    tracing::info!(ntp = ?bound.ntp, nts_ke = ?bound.ke, port_record = ?port_record, "ntsd ready");
    on_ready(&bound);

    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    tokio::task::spawn_blocking(move || workers.stop())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Rotates the master keys at each epoch boundary. A rotation whose ring
/// cannot be saved leaves the old ring in force and is retried.
async fn rotate_keys(
    keys: Arc<RotatingKeys>,
    events: Arc<KeyCounters>,
    mut stop: watch::Receiver<bool>,
) {
    const RETRY: u64 = 10;
    let mut retry = false;
    loop {
        let wait = match retry {
            true => RETRY.min(keys.schedule().interval),
            false => keys.seconds_until_rotation(unix_secs()),
        };
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
            _ = stop.changed() => return,
        }
        retry = false;
        match keys.rotate(unix_secs()) {
            Ok(true) => {
                events.rotations.fetch_add(1, Relaxed);
                tracing::info!(current = keys.load().current_id(), "master key rotated");
            }
            Ok(false) => {}
            Err(e) => {
                events.failures.fetch_add(1, Relaxed);
                retry = true;
                tracing::error!(error = %e, "master key rotation failed; the current key stays in force, retrying");
            }
        }
    }
}

/// `ntsd keys rotate` (or `kill -USR1`): replace the sealing key now.
fn forced_rotations(
    keys: Arc<RotatingKeys>,
    events: Arc<KeyCounters>,
    mut stop: watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(|e| e.to_string())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = usr1.recv() => {}
                _ = stop.changed() => return,
            }
            match keys.force_rotate(unix_secs()) {
                Ok(id) => {
                    events.forced.fetch_add(1, Relaxed);
                    tracing::warn!(current = id, "master key rotated by request (SIGUSR1)");
                }
                Err(e) => {
                    events.failures.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "requested key rotation failed");
                }
            }
        }
    })
}
