//! The few direct system calls outside the NTP back ends.
#![allow(unsafe_code)]

/// Sends SIGUSR1 (rotate keys) to `pid`.
pub fn signal_usr1(pid: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGUSR1) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd's default
/// soft limit is 1,024, the same as `[nts_ke] max_connections`), and
/// returns the limit now in force.
pub fn raise_nofile() -> u64 {
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
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The NTS-KE connection cap that fits under `limit` descriptors with
/// `reserved` of them kept for everything else: `wanted`, or less with a
/// warning; an error when not even a handful fit.
pub fn fit_connections(wanted: usize, limit: u64, reserved: u64) -> Result<usize, String> {
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

/// The uid and gid of `user` (and `group`, else the user's primary group),
/// from the system's user database.
pub fn lookup_user(user: &str, group: Option<&str>) -> Result<(u32, u32), String> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(|_| format!("{s:?} is not a name"));
    let name = c(user)?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain old data; getpwnam_r writes it and the strings
    // it points to into `buf`, both valid for the call.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if r != 0 || found.is_null() {
        return Err(format!("[server] user: no user {user:?} on this system"));
    }
    let (uid, mut gid) = (pw.pw_uid, pw.pw_gid);
    if let Some(group) = group {
        let name = c(group)?;
        // SAFETY: as above, for group.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let r = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if r != 0 || found.is_null() {
            return Err(format!("[server] group: no group {group:?} on this system"));
        }
        gid = gr.gr_gid;
    }
    Ok((uid, gid))
}

/// Becomes `uid`:`gid` for good, in every thread: supplementary groups
/// set to `gid` alone, then the group, then the user (glibc applies each
/// to all threads). Leaving root this way clears every capability; that is
/// checked, as is that no thread kept another user.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), String> {
    // SAFETY: getters without arguments.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if (euid, egid) == (uid, gid) {
        return Ok(());
    }
    if euid != 0 {
        return Err(format!(
            "[server] user: ntsd runs as uid {euid}, not root, so it cannot become uid {uid}; start it as root, or leave [server] user out and start it as that user (systemd: User= with AmbientCapabilities=CAP_NET_BIND_SERVICE)"
        ));
    }
    let err = |what: &str| {
        format!(
            "cannot drop privileges ({what}): {}",
            std::io::Error::last_os_error()
        )
    };
    // SAFETY: setgroups reads one gid_t from a valid pointer; setgid and
    // setuid take plain integers.
    if unsafe { libc::setgroups(1, &gid) } != 0 {
        return Err(err("setgroups"));
    }
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(err("setgid"));
    }
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(err("setuid"));
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integers only.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| e.to_string())?;
    for t in tasks.filter_map(Result::ok) {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        let ids = format!("{uid} {uid} {uid} {uid}");
        if field("Uid:") != ids || field("Gid:") != format!("{gid} {gid} {gid} {gid}") {
            return Err(format!("thread {:?} kept another user", t.file_name()));
        }
        if !field("CapEff:").trim_start_matches('0').is_empty()
            || !field("CapPrm:").trim_start_matches('0').is_empty()
        {
            return Err(format!("thread {:?} kept capabilities", t.file_name()));
        }
    }
    Ok(())
}

/// Whether `uid`:`gid` may read `path` by its mode bits (for a warning when
/// the certificates could not be reloaded after the privilege drop).
pub fn readable_by(path: &std::path::Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|m| {
        let mode = m.mode();
        (m.uid() == uid && mode & 0o400 != 0)
            || (m.gid() == gid && mode & 0o040 != 0)
            || mode & 0o004 != 0
    })
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
