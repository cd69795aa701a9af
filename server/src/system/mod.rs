//! The process and its host: signals, resource limits, the user ntsd runs
//! as, and the listening-address rules both listeners share. Used by
//! `run` and the planes' start-up; nothing here runs per packet or per
//! session.

pub(crate) mod limits;
pub(crate) mod listen;
pub(crate) mod privileges;
pub(crate) mod signals;
