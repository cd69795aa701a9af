//! The pid file in the key directory, through which `ntsd keys rotate`
//! finds the running server.

use std::path::Path;

/// The running server's pid, kept in the dump directory for `keys rotate`.
pub(crate) const PID_FILE: &str = "ntsd.pid";

/// Writes the pid file (given to `owner`, the user ntsd drops to, if
/// any); removed again when the returned guard drops, through a descriptor
/// of the directory, so also after the privileges are gone.
pub(crate) fn write_pid(dir: &Path, owner: Option<(u32, u32)>) -> Result<PidFile, String> {
    use rustix::fs::{Mode, OFlags};
    let path = dir.join(PID_FILE);
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    std::fs::write(&path, format!("{}\n", std::process::id())).map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(err)?;
    }
    let dirfd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    Ok(PidFile { dirfd })
}

#[derive(Debug)]
pub(crate) struct PidFile {
    dirfd: std::os::fd::OwnedFd,
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(&self.dirfd, PID_FILE, rustix::fs::AtFlags::empty());
    }
}
