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
