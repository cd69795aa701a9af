//! `ntsd run`: the start-up order, the wait, and the shutdown in reverse.
//!
//! ```text
//! main thread: tokio runtime ── NTS-KE, metrics, time source, forced rotations
//! ntsd-keys thread ── the key ring follows the wall clock
//! NTP worker threads (own io_uring or recvmmsg loop each) ── Server::handle
//! shared: Arc<RotatingKeys> (ArcSwap inside), Arc<ArcSwap<SystemInfo>>
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Backend, Config, TimeSource};
use crate::ke::certs::Certificates;
use crate::ke::{self, Ke};
use crate::keys::Keys;
use crate::ntp::{self, Ntp};
use crate::ops::health::{CertificateState, Health};
use crate::ops::metrics::Sources;
use crate::ops::{self, notify, Ops};
use crate::system::privileges::{self, RunAs};
use crate::system::signals::{config_changes, ConfigFile, Signals};
use crate::time::Time;

/// Addresses the running server actually bound (ephemeral ports resolved).
#[derive(Debug, Clone)]
pub struct Bound {
    pub ntp: Vec<SocketAddr>,
    pub ke: Vec<SocketAddr>,
}

/// `ntsd run`: loads the configuration file at `path` and runs the server
/// as [`run`] does; a SIGHUP after the file was edited logs that a restart
/// is needed to apply it.
pub fn run_file(path: &std::path::Path, on_ready: impl FnOnce(&Bound)) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = ConfigFile {
        path: path.to_owned(),
        bytes,
    };
    start(config, Some(file), on_ready)
}

/// Runs the server until SIGTERM or SIGINT, or a fatal worker error.
/// `on_ready` is called once everything is bound and started.
pub fn run(config: Config, on_ready: impl FnOnce(&Bound)) -> Result<(), String> {
    start(config, None, on_ready)
}

fn start(
    config: Config,
    file: Option<ConfigFile>,
    on_ready: impl FnOnce(&Bound),
) -> Result<(), String> {
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
    runtime.block_on(serve(config, file, on_ready))
}

/// Everything ntsd listens on, bound before any plane starts: a port in
/// use stops the start before a key file is touched.
struct Listeners {
    ntp: ntp::Sockets,
    ke: Vec<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
}

impl Listeners {
    fn bind(config: &Config) -> Result<Listeners, String> {
        Ok(Listeners {
            ke: ke::bind(&config.nts_ke.listen).map_err(|e| e.to_string())?,
            metrics: ops::bind(&config.metrics)?,
            ntp: ntp::Sockets::bind(&config.ntp)?,
        })
    }
}

async fn serve(
    config: Config,
    file: Option<ConfigFile>,
    on_ready: impl FnOnce(&Bound),
) -> Result<(), String> {
    let Signals {
        mut term,
        mut int,
        hup,
        usr1,
    } = Signals::register()?;
    // Before any socket: a many-core host needs more than the usual soft
    // limit of 1,024 descriptors for its workers' sockets.
    let nofile = crate::system::limits::raise_nofile();
    // Who ntsd becomes once everything is open; their supplementary groups
    // are kept, as initgroups(3) gives them (certificates are often
    // readable through one, such as ssl-cert).
    let run_as = privileges::run_as(&config.server)?;
    let owner = run_as.as_ref().map(RunAs::owner);
    let listeners = Listeners::bind(&config)?;
    // A certificate problem takes NTS-KE down, never the server.
    let certs = Certificates::load(config.nts_ke.certificates());
    let (stop_tx, stop) = watch::channel(false);
    let config_watch = file.map(|f| tokio::spawn(config_changes(f, stop.clone())));
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::unbounded_channel();

    let keys = Keys::start(&config, owner, usr1, stop.clone())?;
    let time = Time::start(&config, stop.clone())?;
    let ntp_addrs = listeners.ntp.local_addrs().to_vec();
    let ntp = Ntp::start(
        &config,
        listeners.ntp,
        keys.ring.clone(),
        time.system.clone(),
        fatal_tx,
    )?;
    let health = Arc::new(Health::new(
        ntp.health.clone(),
        listeners.ke.len(),
        time.system.clone(),
        Some(certs.clone() as Arc<dyn CertificateState>),
    ));
    let links = ke::Links {
        keys: keys.ring.clone(),
        certs: certs.clone(),
        health: health.clone(),
        ntp_port: ntp_addrs.first().map_or(123, SocketAddr::port),
        nofile,
    };
    let ke = Ke::start(&config, listeners.ke, links, hup, stop.clone())?;
    let sources = metric_sources(&config, &keys, &time, &ntp, &ke, &health, &certs);
    let ops = Ops::start(listeners.metrics, sources, health.clone(), stop)?;

    if let Some(run_as) = &run_as {
        drop_privileges(&config, run_as)?;
    } else if rustix::process::geteuid().is_root() {
        // chrony drops root by default; ntsd drops it only when told to.
        tracing::warn!("ntsd runs as root: no [server] user is set, so it keeps every privilege after binding; set [server] user, or start it unprivileged (deploy/systemd/ntsd.service does, with DynamicUser=)");
    }
    let bound = Bound {
        ntp: ntp_addrs,
        ke: ke.local_addrs.clone(),
    };
    health.set_started();
    announce_ready(&bound, &ke, &certs, &keys);
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
    ops.stop().await;
    ke.stop().await;
    tokio::task::spawn_blocking(move || ntp.stop())
        .await
        .map_err(|e| e.to_string())?;
    time.stop().await;
    keys.stop().await;
    if let Some(task) = config_watch {
        let _ = task.await;
    }
    tracing::info!("stopped");
    outcome
}

/// What the metrics endpoint reads: every plane's counters and state.
fn metric_sources(
    config: &Config,
    keys: &Keys,
    time: &Time,
    ntp: &Ntp,
    ke: &Ke,
    health: &Arc<Health>,
    certs: &Arc<Certificates>,
) -> Sources {
    Sources {
        ntp: ntp.counters.clone(),
        clients: ntp.clients.clone(),
        ke: ke.counters.clone(),
        ke_max_connections: ke.max_connections,
        ke_open: ke.slots.clone(),
        keys: keys.ring.clone(),
        key_events: keys.events.clone(),
        time_events: time.events.clone(),
        upstream: config.time.source == TimeSource::Upstream,
        system: time.system.clone(),
        health: health.clone(),
        certs: certs.clone(),
        backend: match ntp.backend {
            Backend::IoUring => "io-uring",
            _ => "portable",
        },
    }
}

/// `ntsd ready` in the log, and READY=1 with a status line to systemd.
fn announce_ready(bound: &Bound, ke: &Ke, certs: &Certificates, keys: &Keys) {
    tracing::info!(ntp = ?bound.ntp, nts_ke = ?bound.ke, port_record = ?ke.port_record, nts_ke_up = certs.usable(), "ntsd ready");
    notify::ready(&format!(
        "serving NTP on {:?}, NTS-KE on {:?}{}; key {}",
        bound.ntp,
        bound.ke,
        match certs.usable() {
            true => "",
            false => " (down: no usable certificate)",
        },
        keys.ring.load().current_id()
    ));
}

/// Everything is bound and open: from here on ntsd needs no privilege.
/// Files it reloads later and that the new user cannot read are named.
fn drop_privileges(config: &Config, run_as: &RunAs) -> Result<(), String> {
    let RunAs { uid, gid, groups } = run_as;
    let (uid, gid) = (*uid, *gid);
    privileges::drop_privileges(uid, gid, groups)?;
    for (key, path) in config.files() {
        if !privileges::readable_by(&path, uid, groups) {
            tracing::warn!(%key, path = %path.display(), uid, ?groups, "not readable by the user ntsd runs as: certificate reloads will be refused until it is (e.g. group-readable by one of that user's groups)");
        }
    }
    tracing::info!(uid, gid, ?groups, "privileges dropped");
    Ok(())
}
