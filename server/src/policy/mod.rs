//! Who may talk to the server and how often: access lists (`[access]`,
//! `[nts_ke] allow/deny`) and the per-prefix rate limiter
//! (`[access.rate_limit]`, `[nts_ke.rate_limit]`). Used by both the NTP
//! workers (per packet: no allocation, no lock) and NTS-KE (per
//! connection). Reads only its own config types; knows no plane.

pub(crate) mod access;
pub(crate) mod ratelimit;
