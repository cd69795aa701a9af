//! One worker per client: a classic BPF program on a `SO_REUSEPORT` group
//! that picks the socket from the datagram's source address alone.
//!
//! Without it the kernel hashes the 4-tuple, and a client that opens a new
//! source port for every request (chrony does) reaches a different socket,
//! and so a different worker, each time. Whatever a worker keeps per client
//! (its rate-limit table, saved timestamps) then sees only part of that
//! client's traffic.
//!
//! ```text
//! IPv4: A = source address (network header, offset 12)
//! IPv6: A = the four words of the source address (offsets 8..24), xored
//! A = (A × 0x9e3779b1) >> 16;  return A mod group size   (the socket's index)
//! ```
//!
//! The index is the socket's place in the group, which is the order the
//! sockets were bound in. The program reads the network header through
//! `SKF_NET_OFF`, since the kernel runs it with the data pointing past the
//! UDP header; it needs no eBPF toolchain and no privilege.

use std::os::fd::AsRawFd;

/// `SO_ATTACH_REUSEPORT_CBPF` (Linux 4.5): 51 everywhere but SPARC. The
/// libc crate exports it only for Android.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 0x35;

/// Fibonacci hashing's multiplier (2^32 / golden ratio): spreads addresses
/// that differ only in a few bits over the high half of the product.
const MIX: u32 = 0x9e37_79b1;

const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
const XOR_X: u16 = (libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X) as u16;
const MUL_K: u16 = (libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K) as u16;
const RSH_K: u16 = (libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K) as u16;
const MOD_K: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;

fn op(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A load of the 32-bit word at `offset` in the network header.
fn load_net(offset: i32) -> libc::sock_filter {
    op(LD_ABS_W, (libc::SKF_NET_OFF + offset) as u32)
}

/// The program for a group of `sockets` sockets of one family.
fn program(ipv6: bool, sockets: u32) -> Vec<libc::sock_filter> {
    let mut p = Vec::new();
    if ipv6 {
        p.push(load_net(8));
        for offset in [12, 16, 20] {
            p.push(op(TAX, 0));
            p.push(load_net(offset));
            p.push(op(XOR_X, 0));
        }
    } else {
        p.push(load_net(12));
    }
    p.push(op(MUL_K, MIX));
    p.push(op(RSH_K, 16));
    p.push(op(MOD_K, sockets));
    p.push(op(RET_A, 0));
    p
}

/// The socket index [`steer_by_source`] picks for a source address, for
/// tests and for operators' tools: the same arithmetic as the program.
pub fn steered_index(source: std::net::IpAddr, sockets: u32) -> u32 {
    let a = match source {
        std::net::IpAddr::V4(a) => u32::from(a),
        std::net::IpAddr::V6(a) => {
            let o = a.octets();
            let word = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            word(0) ^ word(4) ^ word(8) ^ word(12)
        }
    };
    (a.wrapping_mul(MIX) >> 16) % sockets.max(1)
}

/// Makes the `SO_REUSEPORT` group that `socket` belongs to deliver every
/// datagram to the socket at index [`steered_index`] of its source
/// address, among `sockets` sockets bound in order (IPv6 sockets when
/// `ipv6`). Call it once per group, after binding; it applies to the whole
/// group. An index past the group's end (a socket gone) falls back to the
/// kernel's hash.
pub fn steer_by_source(socket: &impl AsRawFd, ipv6: bool, sockets: u32) -> std::io::Result<()> {
    if sockets == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let mut filter = program(ipv6, sockets);
    let fprog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_mut_ptr(),
    };
    // `fprog` points at `filter`, both alive for the call; the kernel
    // copies the program.
    crate::sockopt::set_opt(socket, libc::SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr, UdpSocket};
    use std::time::Duration;

    use super::*;

    /// A `SO_REUSEPORT` group of `n` sockets on `addr` (port 0: one
    /// ephemeral port for all), steered.
    fn group(addr: SocketAddr, n: u32) -> Vec<UdpSocket> {
        let mut out: Vec<UdpSocket> = Vec::new();
        let mut at = addr;
        for _ in 0..n {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                None,
            )
            .unwrap();
            s.set_reuse_port(true).unwrap();
            if addr.is_ipv6() {
                s.set_only_v6(true).unwrap();
            }
            s.bind(&at.into()).unwrap();
            let s: UdpSocket = s.into();
            at = s.local_addr().unwrap();
            s.set_nonblocking(true).unwrap();
            out.push(s);
        }
        steer_by_source(&out[0], addr.is_ipv6(), n).unwrap();
        out
    }

    /// The index of the socket in `group` that received one datagram.
    fn receiver(group: &[UdpSocket]) -> usize {
        let mut buf = [0u8; 16];
        for _ in 0..500 {
            for (i, s) in group.iter().enumerate() {
                if s.recv(&mut buf).is_ok() {
                    return i;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("no socket of the group received the datagram");
    }

    /// Sends from a new socket (a new source port) on `source` to `to`
    /// `times` times; the receiving socket of each.
    fn receivers(group: &[UdpSocket], source: IpAddr, times: usize) -> Vec<usize> {
        let to = group[0].local_addr().unwrap();
        (0..times)
            .map(|_| {
                let c = UdpSocket::bind((source, 0)).unwrap();
                c.send_to(b"x", to).unwrap();
                receiver(group)
            })
            .collect()
    }

    #[test]
    fn a_client_changing_its_port_always_reaches_the_same_socket_ipv4() {
        let n = 4;
        let g = group("127.0.0.1:0".parse().unwrap(), n);
        let mut used = std::collections::BTreeSet::new();
        for last in 1..=12u8 {
            let source = IpAddr::from([127, 0, 0, last]);
            let got = receivers(&g, source, 6);
            let expected = steered_index(source, n) as usize;
            assert!(
                got.iter().all(|&i| i == expected),
                "{source}: sockets {got:?}, expected {expected} every time"
            );
            used.insert(expected);
        }
        // Twelve neighbouring addresses do not all land on one socket.
        assert!(used.len() >= 3, "{used:?}");
    }

    #[test]
    fn a_client_changing_its_port_always_reaches_the_same_socket_ipv6() {
        let n = 3;
        let v6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
        if !testkit::require("an IPv6 loopback address (::1)", v6) {
            return;
        }
        let g = group("[::1]:0".parse().unwrap(), n);
        let source: IpAddr = "::1".parse().unwrap();
        let got = receivers(&g, source, 12);
        let expected = steered_index(source, n) as usize;
        assert!(
            got.iter().all(|&i| i == expected),
            "{got:?}, expected {expected}"
        );
    }

    #[test]
    fn the_index_stays_within_the_group() {
        for n in 1..9 {
            for last in 0..=255u8 {
                assert!(steered_index(IpAddr::from([192, 0, 2, last]), n) < n);
            }
        }
        assert_eq!(steered_index(IpAddr::from([192, 0, 2, 1]), 0), 0);
    }
}
