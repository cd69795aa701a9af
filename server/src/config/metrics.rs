//! `[metrics]`: the Prometheus and health endpoint.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus endpoint; none when unset.
    #[serde(deserialize_with = "super::addr::one")]
    pub listen: Option<SocketAddr>,
}
