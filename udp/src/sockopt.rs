//! Socket options the NTP data path sets once per socket.

use std::os::fd::AsRawFd;

/// Asks the kernel for the destination address of every datagram, so
/// that a socket bound to `0.0.0.0` or `[::]` answers from the address
/// the client sent to (an anycast address, or one of several): a
/// reply from another address is dropped by the client.
pub fn enable_pktinfo(socket: &impl AsRawFd, ipv6: bool) -> std::io::Result<()> {
    let (level, name) = match ipv6 {
        true => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
        false => (libc::IPPROTO_IP, libc::IP_PKTINFO),
    };
    set_flag(socket, level, name)
}

/// Turns on an integer socket option.
fn set_flag(socket: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> std::io::Result<()> {
    set_int(socket, level, name, 1)
}

/// Sets an integer socket option.
fn set_int(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    on: libc::c_int,
) -> std::io::Result<()> {
    set_opt(socket, level, name, &on)
}

/// Sets a socket option whose value is `value`, passed by address with
/// its size, as setsockopt(2) takes it. `T` must be the plain C type the
/// option expects (the kernel copies it).
pub(crate) fn set_opt<T>(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: `value` is a valid T for the duration of the call, and the
    // kernel reads at most size_of::<T>() bytes of it.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sends every IPv4 reply with Don't Fragment set and IP ID 0
/// (IP_PMTUDISC_PROBE), never fragmented by the kernel. A reply is
/// never larger than its request, so it fits the path the request came
/// by. Path-MTU updates are ignored: a spoofed ICMP "fragmentation
/// needed" cannot make the server fragment its replies, which is how
/// off-path attackers inject forged fragments into NTP replies. And with
/// DF the kernel leaves out its shared, hashed IP-ID generator
/// (`__ip_select_ident`, under the default IP_PMTUDISC_WANT), which is
/// measurably cheaper per reply (bench/RESULTS.md).
pub fn set_dont_fragment(socket: &impl AsRawFd) -> std::io::Result<()> {
    set_int(
        socket,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    )
}
