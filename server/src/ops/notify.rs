//! systemd readiness (`Type=notify`): `READY=1` once the sockets are bound
//! and the keys loaded, `STOPPING=1` on shutdown, and a `STATUS=` line with
//! each. Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
