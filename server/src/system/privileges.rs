//! Who ntsd runs as once everything is bound: the `[server]` user and
//! group, their supplementary groups, the privilege drop, and whether that
//! user can read a file the server reloads.
#![allow(unsafe_code)]

/// The uid and gid of `user` (and `group`, else the user's primary group),
/// from the system's user database.
pub(crate) fn lookup_user(user: &str, group: Option<&str>) -> Result<(u32, u32), String> {
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

/// The user `[server]` names, as ntsd will run after dropping root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Its groups, `gid` first ([`user_groups`]).
    pub(crate) groups: Vec<u32>,
}

impl RunAs {
    /// The uid and gid, as the key store takes them.
    pub(crate) fn owner(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }
}

/// The `[server]` user with its group and groups; `None` without one.
pub(crate) fn run_as(server: &crate::config::ServerConfig) -> Result<Option<RunAs>, String> {
    let Some(user) = &server.user else {
        return Ok(None);
    };
    let (uid, gid) = lookup_user(user, server.group.as_deref())?;
    let groups = user_groups(user, gid)?;
    Ok(Some(RunAs { uid, gid, groups }))
}

/// The groups `user` belongs to (from the system's group database), with
/// `gid` first: what `initgroups(3)` would give it. Certificate files are
/// often readable through such a group (certbot's files through
/// `ssl-cert`), so the user keeps them after the privilege drop.
pub(crate) fn user_groups(user: &str, gid: u32) -> Result<Vec<u32>, String> {
    let name = std::ffi::CString::new(user).map_err(|_| format!("{user:?} is not a name"))?;
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; usize::try_from(n).unwrap_or(32)];
        let mut count = n;
        // SAFETY: `groups` holds `count` gid_t; getgrouplist writes at most
        // that many and sets `count` to the number it found.
        let r = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if r >= 0 {
            groups.truncate(usize::try_from(count).unwrap_or(0));
            // gid first, each group once.
            let mut out = vec![gid];
            out.extend(groups.into_iter().filter(|&g| g != gid));
            out.dedup();
            return Ok(out);
        }
        if count <= n || n >= 65_536 {
            return Err(format!("[server] user: cannot list the groups of {user:?}"));
        }
        n = count;
    }
}

/// Becomes `uid`:`gid` with the supplementary `groups` for good, in every
/// thread: the groups, then the group, then the user (glibc applies each
/// to all threads). Leaving root this way clears every capability; that is
/// checked, as is that no thread kept another user.
pub(crate) fn drop_privileges(uid: u32, gid: u32, groups: &[u32]) -> Result<(), String> {
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
    let groups: Vec<libc::gid_t> = match groups.is_empty() {
        true => vec![gid],
        false => groups.to_vec(),
    };
    // SAFETY: setgroups reads `groups.len()` gid_t from a valid pointer;
    // setgid and setuid take plain integers.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
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

/// Whether `uid` with the groups `groups` may read `path` by its mode bits
/// (root reads anything), and walk every directory on the way to it.
pub(crate) fn readable_by(path: &std::path::Path, uid: u32, groups: &[u32]) -> bool {
    use std::os::unix::fs::MetadataExt;
    if uid == 0 {
        return true;
    }
    let allows = |m: &std::fs::Metadata, bits: u32| {
        let mode = m.mode();
        if m.uid() == uid {
            mode & (bits << 6) != 0
        } else if groups.contains(&m.gid()) {
            mode & (bits << 3) != 0
        } else {
            mode & bits != 0
        }
    };
    let dirs_ok = path
        .ancestors()
        .skip(1)
        .all(|d| d.as_os_str().is_empty() || std::fs::metadata(d).is_ok_and(|m| allows(&m, 0o1)));
    dirs_ok && std::fs::metadata(path).is_ok_and(|m| allows(&m, 0o4))
}
