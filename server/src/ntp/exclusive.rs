//! Never share the NTP port by accident.
//!
//! The workers bind with `SO_REUSEPORT`, which lets any other socket of
//! the same user that sets it too (a second ntsd, or chronyd or ntpd
//! running as root beside an ntsd started as root) join the port: the
//! kernel then spreads the clients over both, and some get the other
//! server's answers or NTS NAKs. Before the workers bind, each configured
//! address is bound once more without any reuse option, which fails if any
//! socket at all holds it; the start then stops with an error naming the
//! address and, where `/proc` shows it, the process holding it.

use std::net::{IpAddr, SocketAddr};

/// A port that no UDP socket holds on `addr`'s address, from a plain
/// trial bind to port 0 (`None` if that fails: the real bind reports why).
pub(super) fn free_port(addr: SocketAddr) -> Option<u16> {
    let s = plain_socket(addr).ok()?;
    s.bind(&addr.into()).ok()?;
    Some(s.local_addr().ok()?.as_socket()?.port())
}

/// A UDP socket with no reuse option (IPv6-only for IPv6, as the
/// workers' sockets are).
fn plain_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// `Ok` if no socket holds `addr` (UDP); otherwise an error naming it and
/// its holder. Any other failure of the trial bind is left for the real
/// bind to report.
pub(super) fn ensure_not_held(addr: SocketAddr) -> Result<(), String> {
    match plain_socket(addr).and_then(|s| s.bind(&addr.into())) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let who = holder(addr).unwrap_or_else(|| {
                "another process (not visible to this user; see `ss -ulpn`)".to_owned()
            });
            Err(format!(
                "[ntp] listen: {addr} is already in use by {who}; ntsd does not share its NTP port. Stop the other server first (chrony: systemctl stop chrony, or chronyd's `port 0` to keep it as a client only), or give ntsd another address or port"
            ))
        }
        _ => Ok(()),
    }
}

/// The process holding a UDP socket that conflicts with `addr`, as
/// `name (pid N)`, from `/proc/net/udp{,6}` and the processes' descriptors.
fn holder(addr: SocketAddr) -> Option<String> {
    let mut inodes = Vec::new();
    for (file, v6) in [("/proc/net/udp", false), ("/proc/net/udp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        inodes.extend(
            sockets(&text, v6)
                .into_iter()
                .filter(|(bound, _)| conflicts(*bound, addr))
                .map(|(_, inode)| inode),
        );
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let name = proc_entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                let comm =
                    std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
                return Some(format!("{} (pid {pid})", comm.trim()));
            }
        }
    }
    None
}

/// Whether a socket bound to `bound` keeps a plain socket from binding
/// `wanted`: the same port, and the same address or a wildcard on either
/// side (an IPv6 wildcard socket may take IPv4 too).
fn conflicts(bound: SocketAddr, wanted: SocketAddr) -> bool {
    if bound.port() != wanted.port() {
        return false;
    }
    let (b, w) = (bound.ip(), wanted.ip());
    match (b, w) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            b == w || b.is_unspecified() || w.is_unspecified()
        }
        (IpAddr::V6(b6), IpAddr::V4(w4)) => b6.is_unspecified() || b6.to_ipv4_mapped() == Some(w4),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// The local addresses and inodes of the sockets in a `/proc/net/udp`
/// (or `udp6`) table. Addresses are printed as the kernel stores them
/// (each 32-bit word in host order), ports in host order.
fn sockets(table: &str, v6: bool) -> Vec<(SocketAddr, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (ip_hex, port_hex) = fields.get(1)?.split_once(':')?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let words = ip_hex
                .as_bytes()
                .chunks(8)
                .map(|w| {
                    let w = std::str::from_utf8(w).ok()?;
                    u32::from_str_radix(w, 16).ok().map(u32::to_ne_bytes)
                })
                .collect::<Option<Vec<[u8; 4]>>>()?;
            let ip = match (v6, words.as_slice()) {
                (false, [a]) => IpAddr::from(*a),
                (true, [a, b, c, d]) => {
                    let mut o = [0u8; 16];
                    for (dst, src) in o.chunks_mut(4).zip([a, b, c, d]) {
                        dst.copy_from_slice(src);
                    }
                    IpAddr::from(o)
                }
                _ => return None,
            };
            Some((SocketAddr::new(ip, port), inode))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_udp_tables_parse() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
           12: 0100007F:007B 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n";
        let ip = u32::from_ne_bytes([127, 0, 0, 1]);
        let v4 = v4.replace("0100007F", &format!("{ip:08X}"));
        assert_eq!(
            sockets(&v4, false),
            vec![("127.0.0.1:123".parse().unwrap(), 4242)]
        );
        let w: Vec<String> = [[0u8, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
            .iter()
            .map(|b| format!("{:08X}", u32::from_ne_bytes(*b)))
            .collect();
        let v6 = format!(
            "header\n 3: {}:1234 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 77 2 0 0\n",
            w.concat()
        );
        assert_eq!(
            sockets(&v6, true),
            vec![("[::1]:4660".parse().unwrap(), 77)]
        );
        assert!(sockets("header\n garbage line\n", false).is_empty());
    }

    #[test]
    fn conflicts_follow_the_kernels_rules_for_plain_sockets() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(conflicts(a("0.0.0.0:123"), a("127.0.0.1:123")));
        assert!(conflicts(a("127.0.0.1:123"), a("0.0.0.0:123")));
        assert!(!conflicts(a("127.0.0.2:123"), a("127.0.0.1:123")));
        assert!(!conflicts(a("0.0.0.0:124"), a("0.0.0.0:123")));
        assert!(conflicts(a("[::]:123"), a("[::1]:123")));
        assert!(conflicts(a("[::]:123"), a("127.0.0.1:123")));
        assert!(!conflicts(a("0.0.0.0:123"), a("[::1]:123")));
    }

    /// A socket bound as chronyd binds its NTP socket (SO_REUSEADDR) makes
    /// the check fail, naming the address and this very process.
    #[test]
    fn a_held_port_is_named_with_its_holder() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let e = ensure_not_held(addr).unwrap_err();
        assert!(e.contains(&addr.to_string()), "{e}");
        assert!(e.contains(&format!("(pid {})", std::process::id())), "{e}");
        drop(s);
        assert_eq!(ensure_not_held(addr), Ok(()));
    }
}
