//! Resource limits: the descriptors ntsd may open, and the NTS-KE
//! connection cap that fits under them.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd's default
/// soft limit is 1,024, the same as `[nts_ke] max_connections`), and
/// returns the limit now in force.
pub(crate) fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    if lim.current != lim.maximum && setrlimit(Resource::Nofile, raised).is_ok() {
        return lim.maximum.unwrap_or(u64::MAX);
    }
    lim.current.unwrap_or(u64::MAX)
}

/// Descriptors open now.
pub(crate) fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The NTS-KE connection cap that fits under `limit` descriptors with
/// `reserved` of them kept for everything else: `wanted`, or less with a
/// warning; an error when not even a handful fit.
pub(crate) fn fit_connections(wanted: usize, limit: u64, reserved: u64) -> Result<usize, String> {
    let room = limit.saturating_sub(reserved);
    if room >= wanted as u64 {
        return Ok(wanted);
    }
    if room < 8 {
        return Err(format!(
            "[nts_ke] max_connections: only {limit} file descriptors are allowed (RLIMIT_NOFILE) and {reserved} are needed besides NTS-KE; raise the limit (systemd: LimitNOFILE=, shell: ulimit -n)"
        ));
    }
    tracing::warn!(
        configured = wanted,
        used = room,
        nofile = limit,
        "[nts_ke] max_connections does not fit under RLIMIT_NOFILE with headroom; lowered (raise LimitNOFILE= to keep it)"
    );
    Ok(room as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_the_descriptor_limit() {
        assert_eq!(fit_connections(1024, 1_048_576, 100), Ok(1024));
        assert_eq!(fit_connections(1024, 1024, 100), Ok(924));
        assert!(fit_connections(1024, 64, 60).is_err());
    }
}
