//! Listening-address helpers shared by the NTP and NTS-KE listeners.

use std::net::SocketAddr;

/// Listen addresses that ask for port 0 all get the one ephemeral port that
/// the first of them was given: IPv4 and IPv6 then share a port, and every
/// `SO_REUSEPORT` worker binds the same one.
#[derive(Debug, Default)]
pub struct SharedEphemeralPort(Option<u16>);

impl SharedEphemeralPort {
    /// The address to bind for a configured listen address.
    pub fn resolve(&self, configured: SocketAddr) -> SocketAddr {
        let mut addr = configured;
        if let (0, Some(port)) = (addr.port(), self.0) {
            addr.set_port(port);
        }
        addr
    }

    /// Records the address actually bound for `requested`.
    pub fn learn(&mut self, requested: SocketAddr, bound: SocketAddr) {
        if requested.port() == 0 && self.0.is_none() {
            self.0 = Some(bound.port());
        }
    }
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
