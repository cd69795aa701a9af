//! The workers' sockets: one `SO_REUSEPORT` socket per worker and listen
//! address, with kernel receive timestamps, Don't Fragment on IPv4, and
//! the destination address on wildcard binds.

use std::net::{SocketAddr, UdpSocket};

use super::exclusive;
use super::worker::STOP_POLL;
use crate::system::listen::SharedEphemeralPort;

/// Opens one `SO_REUSEPORT` socket per worker and listen address. A listen
/// port of 0 is resolved by the first socket and reused by the rest, so all
/// workers (and all addresses with port 0) share one ephemeral port.
pub(super) fn open_sockets(
    listen: &[SocketAddr],
    workers: usize,
) -> std::io::Result<Vec<Vec<UdpSocket>>> {
    let mut port = SharedEphemeralPort::default();
    let mut per_worker: Vec<Vec<UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    for &configured in listen {
        let first = per_worker.first().map_or(0, Vec::len);
        for (i, sockets) in per_worker.iter_mut().enumerate() {
            let mut addr = port.resolve(configured);
            if i == 0 && addr.port() == 0 {
                // A port no socket holds, not one the kernel would let the
                // workers share with another SO_REUSEPORT group.
                if let Some(free) = exclusive::free_port(addr) {
                    addr.set_port(free);
                }
            }
            if i == 0 && addr.port() != 0 {
                exclusive::ensure_not_held(addr)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::AddrInUse, e))?;
            }
            let udp = match open_socket(addr) {
                Ok(s) => s,
                Err(e)
                    if i == 0
                        && listen.len() > 1
                        && crate::system::listen::ipv6_missing(addr, &e) =>
                {
                    crate::system::listen::warn_ipv6_missing("[ntp] listen", addr, &e);
                    break;
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot bind NTP to {addr}: {e}"),
                    ))
                }
            };
            port.learn(configured, udp.local_addr()?);
            sockets.push(udp);
        }
        if let Some(group) = per_worker.first().and_then(|s| s.get(first)) {
            steer(group, workers);
        }
    }
    if per_worker.first().is_some_and(Vec::is_empty) {
        return Err(std::io::Error::other(
            "[ntp] listen: no address could be bound",
        ));
    }
    Ok(per_worker)
}

/// One worker per client: the `SO_REUSEPORT` group that `group` (its
/// first socket, worker 0's) opened delivers each client's datagrams to the
/// worker its source address picks, whatever its source port, so what a
/// worker keeps per client (the rate limit) sees all of that client's
/// requests. Without steering (a kernel before 4.5) the kernel's hash of
/// the ports decides, as before; that is logged, not fatal.
fn steer(group: &UdpSocket, workers: usize) {
    if workers < 2 {
        return;
    }
    let ipv6 = group.local_addr().is_ok_and(|a| a.is_ipv6());
    let n = u32::try_from(workers).unwrap_or(u32::MAX);
    if let Err(e) = ntsd_udp::steer_by_source(group, ipv6, n) {
        tracing::warn!(addr = ?group.local_addr().ok(), error = %e, "[ntp] cannot steer each client to one worker (needs Linux 4.5); the kernel spreads a client's requests over the workers by port, so per-client rate limits see only part of a client's traffic");
    }
}

fn open_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_read_timeout(Some(STOP_POLL))?;
    ntsd_udp::enable_rx_timestamps(&s)?;
    if addr.is_ipv4() {
        ntsd_udp::set_dont_fragment(&s)?;
    }
    if addr.ip().is_unspecified() {
        ntsd_udp::enable_pktinfo(&s, addr.is_ipv6())?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    /// IPv4 sockets send with Don't Fragment and IP ID 0: the kernel skips
    /// its shared IP-ID generator for every reply (IPv6 has no such field).
    #[test]
    #[allow(unsafe_code)]
    fn ipv4_sockets_set_dont_fragment() {
        use std::os::fd::AsRawFd;
        let mode = |s: &std::net::UdpSocket, level, name| {
            let mut v: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `v` and `len` outlive the call; the kernel writes at
            // most `len` bytes.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    level,
                    name,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0);
            v
        };
        let v4 = super::open_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(
            mode(&v4, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            libc::IP_PMTUDISC_PROBE
        );
    }
}
