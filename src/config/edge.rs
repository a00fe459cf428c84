//! `forwarded:` and `limits:`: how drover treats what clients send at the edge.

use super::error::ConfigIssue;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardedFile {
    /// Send `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Real-IP`
    /// to workers.
    pub headers: bool,
    /// Peers (CIDRs) whose `X-Forwarded-For` / `Forwarded` headers are believed, e.g. a
    /// load balancer in front of drover. Empty: nobody's; the TCP peer is the client and
    /// such headers from clients are replaced, so a client cannot spoof its address.
    pub trusted_proxies: Vec<String>,
}

impl Default for ForwardedFile {
    fn default() -> Self {
        ForwardedFile {
            headers: true,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedConfig {
    pub headers: bool,
    pub trusted: Vec<IpNet>,
}

pub fn validate_forwarded(f: &ForwardedFile) -> Result<ForwardedConfig, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut trusted = Vec::new();
    for t in &f.trusted_proxies {
        let parsed = t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => trusted.push(n),
            Err(_) => issues.push(ConfigIssue {
                field: "forwarded.trusted_proxies".into(),
                line: None,
                message: format!("`{t}` is not an IP address or CIDR (e.g. `10.0.0.0/8`)"),
            }),
        }
    }
    if issues.is_empty() {
        Ok(ForwardedConfig {
            headers: f.headers,
            trusted,
        })
    } else {
        Err(issues)
    }
}
