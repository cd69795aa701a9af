//! `sendmmsg` batches, socket addresses as the kernel writes them, and a
//! single timestamped receive.

use std::os::fd::RawFd;

use nts_proto::NtpTimestamp;

use crate::cmsg::{rx_timestamp, ControlBuf, CONTROL_WORDS};

/// The peer's address from the sockaddr bytes the kernel wrote
/// (`sockaddr_in` or `sockaddr_in6`, read field by field).
#[inline]
pub fn peer_ip(name: &[u8]) -> Option<std::net::IpAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let a: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(std::net::IpAddr::from(a))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            Some(std::net::IpAddr::from(a))
        }
        _ => None,
    }
}

/// The first `len` bytes of `storage`, as the kernel filled them.
#[inline]
pub(crate) fn storage_bytes(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> &[u8] {
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: sockaddr_storage is plain old data of at least `len`
    // bytes, borrowed for the lifetime of the slice.
    unsafe {
        std::slice::from_raw_parts((storage as *const libc::sockaddr_storage).cast::<u8>(), len)
    }
}

pub(crate) fn empty_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Points `msg` (through `iov`) at `reply`, addressed to the first
/// `namelen` bytes of `addr`, for [`send_all`].
pub fn point_reply(
    msg: &mut libc::mmsghdr,
    iov: &mut libc::iovec,
    reply: &mut [u8],
    addr: &mut libc::sockaddr_storage,
    namelen: libc::socklen_t,
) {
    *iov = libc::iovec {
        iov_base: reply.as_mut_ptr().cast(),
        iov_len: reply.len(),
    };
    let h = &mut msg.msg_hdr;
    h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
    h.msg_namelen = namelen;
    h.msg_iov = iov;
    h.msg_iovlen = 1;
    h.msg_control = std::ptr::null_mut();
    h.msg_controllen = 0;
    h.msg_flags = 0;
}

/// Sends every message in `msgs` with `sendmmsg(2)`, retrying on EINTR;
/// a datagram the kernel refuses (e.g. an unreachable peer) is skipped.
/// Returns how many were refused.
///
/// # Safety
/// Every header must point (as [`point_reply`] sets it) at a buffer and
/// an address that are valid for the duration of the call.
pub unsafe fn send_all(fd: RawFd, msgs: &mut [libc::mmsghdr]) -> usize {
    let (mut sent, mut refused) = (0, 0);
    while sent < msgs.len() {
        let rest = &mut msgs[sent..];
        // SAFETY: the caller guarantees the headers; `rest` holds
        // `rest.len()` of them.
        let r = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, 0) };
        if r < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            refused += 1;
            sent += 1;
        } else {
            sent += r as usize;
        }
    }
    refused
}

/// Receives one datagram into `buf` (blocking, up to the socket's read
/// timeout); returns its length and the kernel's receive timestamp if one
/// came with it (the socket needs [`crate::enable_rx_timestamps`]).
pub fn recv_timestamped(
    fd: RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<NtpTimestamp>)> {
    let mut control: ControlBuf = [0; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at `buf` and `control`, both valid for the call;
    // the kernel writes at most their lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((n as usize, rx_timestamp(&msg)))
}
