//! The signals ntsd handles, held back during start-up, and the one it
//! sends (`ntsd keys rotate`).
#![allow(unsafe_code)]

/// Sends SIGUSR1 (rotate keys) to `pid`.
pub(crate) fn signal_usr1(pid: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGUSR1) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The signals `ntsd run` handles: stop, reload certificates, rotate keys.
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset write only into the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Holds SIGTERM, SIGINT, SIGHUP and SIGUSR1 back (pending, not lost)
/// from the first line of `main` until their handlers are registered
/// ([`unblock_signals`]): their default action would kill a server still
/// starting, before it could stop cleanly. Threads started meanwhile
/// inherit the mask and leave the signals to the main thread.
pub fn block_signals() {
    let set = handled_signals();
    // SAFETY: pthread_sigmask reads the set we own; no old mask wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Lets the signals held back by [`block_signals`] through, once handled:
/// one that arrived meanwhile is delivered now.
pub(crate) fn unblock_signals() {
    let set = handled_signals();
    // SAFETY: as in block_signals.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// Restores SIGPIPE's default action (Rust ignores it), for the commands
/// that only print: `ntsd query ... | head -1` then ends quietly when the
/// reader goes away, as `cat` does, instead of panicking on the failed
/// write. Never for `run` and `demo`, whose sockets must not kill them.
pub fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// The signals ntsd handles, registered before anything slow (a signal
/// that arrives during start-up is acted on once start-up is done, never
/// fatal).
#[derive(Debug)]
pub(crate) struct Signals {
    pub(crate) term: tokio::signal::unix::Signal,
    pub(crate) int: tokio::signal::unix::Signal,
    pub(crate) hup: tokio::signal::unix::Signal,
    pub(crate) usr1: tokio::signal::unix::Signal,
}

/// The configuration file as `ntsd run` read it at start.
#[derive(Debug, Clone)]
pub(crate) struct ConfigFile {
    pub(crate) path: std::path::PathBuf,
    pub(crate) bytes: Vec<u8>,
}

/// On each SIGHUP (which reloads the certificates), says so when the
/// configuration file no longer holds what ntsd started with: ntsd reads
/// it only at start, and an edit followed by SIGHUP must not pass for
/// applied. Runs until `stop` fires.
pub(crate) async fn config_changes(
    file: ConfigFile,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| format!("cannot handle signals: {e}"))?;
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.changed() => return Ok(()),
        }
        // A small file, read once per SIGHUP.
        let now = std::fs::read(&file.path);
        if now.as_deref().ok() != Some(file.bytes.as_slice()) {
            tracing::warn!(path = %file.path.display(), "the configuration file changed since ntsd started: SIGHUP reloads only the certificates; restart ntsd to apply the new configuration");
        }
    }
}

impl Signals {
    pub(crate) fn register() -> Result<Self, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let on = |kind: SignalKind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
        let signals = Signals {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
            usr1: on(SignalKind::user_defined1())?,
        };
        // Held back since `main` (see [`block_signals`]): from here on
        // they reach the handlers above.
        unblock_signals();
        Ok(signals)
    }
}
