//! Socket addresses in the config (`IP:PORT`), read with an error that
//! says what to write: an IPv6 address with a port needs brackets
//! (`[::1]:123`), and `::1:123` names the address `::1:123`, not port 123
//! of `::1`.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

/// `s` as `IP:PORT`, or the reason it is not one.
pub(crate) fn parse(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        if !s.starts_with('[') && s.matches(':').count() > 1 {
            nts_client::ke::ipv6_brackets(s)
        } else {
            format!("{s:?}: not an address with a port (IP:PORT, or [IPv6]:PORT)")
        }
    })
}

/// For `#[serde(deserialize_with)]`: one address.
pub(super) fn one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map(Some).map_err(serde::de::Error::custom)
}

/// For `#[serde(deserialize_with)]`: a list of addresses.
pub(super) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse(s))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_with_a_port_needs_brackets() {
        assert_eq!(parse("[::1]:123"), Ok("[::1]:123".parse().unwrap()));
        assert_eq!(parse("127.0.0.1:123"), Ok("127.0.0.1:123".parse().unwrap()));
        let e = parse("::1:123").unwrap_err();
        assert!(
            e.contains("needs brackets") && e.contains("\"[::1]:123\""),
            "{e}"
        );
        let e = parse("127.0.0.1").unwrap_err();
        assert!(e.contains("IP:PORT"), "{e}");
    }
}
