//! `[server]`: who ntsd runs as once everything is bound and open.

use serde::Deserialize;

/// `[server]`: the user and group ntsd drops to once every socket is bound
/// and every file opened (unset: it keeps the user it was started as).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub user: Option<String>,
    /// Default: the user's primary group.
    pub group: Option<String>,
}

impl ServerConfig {
    /// The user and group are names.
    pub fn validate(&self) -> Result<(), String> {
        if self.group.is_some() && self.user.is_none() {
            return Err("[server] group: requires user".into());
        }
        for (key, v) in [("user", &self.user), ("group", &self.group)] {
            if v.as_ref().is_some_and(|n| n.is_empty() || n.contains('\0')) {
                return Err(format!("[server] {key}: must be a name"));
            }
        }
        Ok(())
    }
}
