//! Listening-address helpers shared by the NTP and NTS-KE listeners.

use std::net::SocketAddr;

/// Listen addresses that ask for port 0 all get the one ephemeral port that
/// the first of them was given: IPv4 and IPv6 then share a port, and every
/// `SO_REUSEPORT` worker binds the same one.
#[derive(Debug, Default)]
pub(crate) struct SharedEphemeralPort(Option<u16>);

impl SharedEphemeralPort {
    /// The address to bind for a configured listen address.
    pub(crate) fn resolve(&self, configured: SocketAddr) -> SocketAddr {
        let mut addr = configured;
        if let (0, Some(port)) = (addr.port(), self.0) {
            addr.set_port(port);
        }
        addr
    }

    /// Records the address actually bound for `requested`.
    pub(crate) fn learn(&mut self, requested: SocketAddr, bound: SocketAddr) {
        if requested.port() == 0 && self.0.is_none() {
            self.0 = Some(bound.port());
        }
    }
}

/// Whether failing to open or bind `addr` means only that the host has no
/// IPv6 at all (a kernel booted with `ipv6.disable=1`): the default listens
/// on `[::]` as well as `0.0.0.0`, and such a host still serves on IPv4. A
/// warning is logged and the address skipped; any other failure stops the
/// start.
pub(crate) fn ipv6_missing(addr: SocketAddr, e: &std::io::Error) -> bool {
    addr.is_ipv6()
        && addr.ip().is_unspecified()
        && matches!(
            e.raw_os_error(),
            Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
        )
}

/// Logs a skipped IPv6 wildcard address (see [`ipv6_missing`]).
pub(crate) fn warn_ipv6_missing(what: &str, addr: SocketAddr, e: &std::io::Error) {
    tracing::warn!(%addr, error = %e, "{what}: this host has no IPv6; serving on the other addresses");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ephemeral_port_is_shared() {
        let mut p = SharedEphemeralPort::default();
        let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let v6: SocketAddr = "[::1]:0".parse().unwrap();
        let fixed: SocketAddr = "127.0.0.1:123".parse().unwrap();
        assert_eq!(p.resolve(v4), v4);
        p.learn(fixed, fixed);
        p.learn(v4, "127.0.0.1:4000".parse().unwrap());
        p.learn(v4, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(p.resolve(v6), "[::1]:4000".parse().unwrap());
        assert_eq!(p.resolve(fixed), fixed);
    }
}
