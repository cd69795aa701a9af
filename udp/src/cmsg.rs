//! Control messages: what the kernel says about a received datagram (its
//! receive timestamp, the address it was sent to) and the source address a
//! reply is sent from.

use nts_proto::NtpTimestamp;

/// Room for the control messages of a received datagram, as u64s for
/// alignment: SCM_TIMESTAMPING (CMSG_SPACE of three timespecs, 64 bytes
/// on 64-bit Linux) and, on wildcard sockets, IP_PKTINFO (32) or
/// IPV6_PKTINFO (40).
pub(crate) const CONTROL_WORDS: usize = 16;
pub type ControlBuf = [u64; CONTROL_WORDS];

/// Room for the control messages of a reply: the source address
/// (IP_PKTINFO or IPV6_PKTINFO, at most 40 bytes) and the request for a
/// transmit timestamp (SO_TIMESTAMPING, 24 bytes).
pub(crate) type SourceBuf = [u64; 8];

/// What the control messages of a received datagram say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// The kernel's receive timestamp.
    pub at: Option<NtpTimestamp>,
    /// The address the datagram was sent to, on a socket bound to a
    /// wildcard address (IP_PKTINFO / IPV6_RECVPKTINFO); a unicast
    /// address only.
    pub local: Option<std::net::IpAddr>,
}

/// Writes the control messages of a reply into `buf` and points `msg` at
/// them: the source address `local`, when given, and the request for a
/// software transmit timestamp when `stamp` is set. Clears the control
/// pointer when there is neither.
pub(crate) fn attach_control(
    msg: &mut libc::mmsghdr,
    buf: &mut SourceBuf,
    local: Option<std::net::IpAddr>,
    stamp: bool,
) {
    let h = &mut msg.msg_hdr;
    h.msg_control = std::ptr::null_mut();
    h.msg_controllen = 0;
    if local.is_none() && !stamp {
        return;
    }
    *buf = [0; 8];
    let mut used = 0;
    if let Some(local) = local {
        put_source(h, buf, &mut used, local);
    }
    if stamp {
        let flags: u32 = crate::timestamping::TX_REQUEST;
        put_cmsg(
            h,
            buf,
            &mut used,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            flags,
        );
    }
}

fn put_source(
    h: &mut libc::msghdr,
    buf: &mut SourceBuf,
    used: &mut usize,
    local: std::net::IpAddr,
) {
    match local {
        std::net::IpAddr::V4(a) => put_cmsg(
            h,
            buf,
            used,
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            },
        ),
        std::net::IpAddr::V6(a) => put_cmsg(
            h,
            buf,
            used,
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                ipi6_ifindex: 0,
            },
        ),
    }
}

/// Appends one control message carrying `value` to `buf` at offset
/// `*used` (a multiple of the header alignment), points `h` at the
/// messages written so far and advances `*used`. A message that does not
/// fit is left out (the buffer is sized for every message a reply takes).
fn put_cmsg<T>(
    h: &mut libc::msghdr,
    buf: &mut SourceBuf,
    used: &mut usize,
    level: libc::c_int,
    ty: libc::c_int,
    value: T,
) {
    let size = std::mem::size_of::<T>() as u32;
    // SAFETY: pure arithmetic on sizes.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(size) as usize,
            libc::CMSG_LEN(size) as usize,
        )
    };
    if *used + space > std::mem::size_of::<SourceBuf>() {
        return;
    }
    // SAFETY: `*used + space` bytes fit in `buf`, which is u64-aligned, and
    // `*used` is a multiple of CMSG_ALIGN's unit: the header is written
    // aligned within the buffer, the value unaligned at CMSG_DATA, both
    // inside the `space` bytes reserved for this message.
    unsafe {
        let cmsg = buf
            .as_mut_ptr()
            .cast::<u8>()
            .add(*used)
            .cast::<libc::cmsghdr>();
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = ty;
        (*cmsg).cmsg_len = len;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), value);
    }
    *used += space;
    h.msg_control = buf.as_mut_ptr().cast();
    h.msg_controllen = *used;
}

/// The kernel receive timestamp in the control messages of `msg`, if any.
pub(crate) fn rx_timestamp(msg: &libc::msghdr) -> Option<NtpTimestamp> {
    received(msg).at
}

/// Calls `f(level, type, message)` for each control message of `msg`,
/// with a [`Cmsg`] to read its payload: the one walk over control messages
/// the crate has (receives and the error queue both use it).
pub(crate) fn each_cmsg(msg: &libc::msghdr, mut f: impl FnMut(libc::c_int, libc::c_int, Cmsg<'_>)) {
    if msg.msg_control.is_null() || msg.msg_controllen < std::mem::size_of::<libc::cmsghdr>() {
        return;
    }
    // SAFETY: msg_control/msg_controllen describe a buffer the caller owns
    // and the kernel filled; CMSG_FIRSTHDR/CMSG_NXTHDR stay within
    // msg_controllen, and each header handed on lives as long as `msg`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            f(c.cmsg_level, c.cmsg_type, Cmsg(c));
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
}

/// One control message, from [`each_cmsg`].
#[derive(Clone, Copy)]
pub(crate) struct Cmsg<'a>(&'a libc::cmsghdr);

impl Cmsg<'_> {
    /// The payload as a `T` (a C struct the kernel writes for this
    /// message type), when the header's length holds one.
    pub(crate) fn read<T: Copy>(self) -> Option<T> {
        let size = std::mem::size_of::<T>() as u32;
        // SAFETY: pure arithmetic on sizes.
        let needed = unsafe { libc::CMSG_LEN(size) } as usize;
        // cmsg_len is a usize with glibc and a u32 with musl.
        #[allow(clippy::unnecessary_cast)]
        let len = self.0.cmsg_len as usize;
        if len < needed {
            return None;
        }
        // SAFETY: the header's length covers `size` bytes of payload
        // within the control buffer it came from (checked above, and the
        // walk in `each_cmsg` stays within msg_controllen); the payload is
        // read unaligned, and `T` is plain old data.
        Some(unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(self.0).cast::<T>()) })
    }
}

/// The receive timestamp and destination address in `msg`'s control
/// messages.
pub(crate) fn received(msg: &libc::msghdr) -> Received {
    let mut out = Received::default();
    each_cmsg(msg, |level, ty, c| match (level, ty) {
        (libc::SOL_SOCKET, libc::SO_TIMESTAMPING) => {
            if let Some(ts) = c.read::<[libc::timespec; 3]>() {
                out.at = crate::timestamping::chosen(&ts);
            }
        }
        (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
            if let Some(ts) = c.read::<libc::timespec>() {
                out.at = crate::timestamping::timespec(&ts);
            }
        }
        (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
            if let Some(info) = c.read::<libc::in_pktinfo>() {
                let a = std::net::Ipv4Addr::from(info.ipi_addr.s_addr.to_ne_bytes());
                if !a.is_broadcast() && !a.is_multicast() && !a.is_unspecified() {
                    out.local = Some(a.into());
                }
            }
        }
        (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
            if let Some(info) = c.read::<libc::in6_pktinfo>() {
                let a = std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr);
                if !a.is_multicast() && !a.is_unspecified() {
                    out.local = Some(a.into());
                }
            }
        }
        _ => {}
    });
    out
}

/// [`received`] for control messages as bytes (io_uring's layout).
pub fn received_in(control: &[u8]) -> Received {
    let mut aligned: ControlBuf = [0; CONTROL_WORDS];
    let len = control.len().min(std::mem::size_of::<ControlBuf>());
    // SAFETY: copies `len` bytes, within both buffers, into an aligned
    // buffer, so the cmsg headers are read at their natural alignment.
    unsafe {
        std::ptr::copy_nonoverlapping(control.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), len);
    }
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = aligned.as_mut_ptr().cast();
    msg.msg_controllen = len;
    received(&msg)
}
