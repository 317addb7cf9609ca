//! The client allow-list and inbound credentials, checked by every
//! listener (forward and reverse). Connection limits are `limits.rs`;
//! destination ACLs `crate::acl`; brute-force bans `bans.rs`.

use std::net::IpAddr;

use base64::Engine;
use ipnet::IpNet;

use crate::upstream::Credentials;

pub struct Admission {
    users: Vec<Credentials>,
    allow: Vec<IpNet>,
}

/// Constant-time comparison, so credentials cannot be guessed by timing.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admission {
    pub fn new(cfg: &crate::config::AdmissionSettings) -> Self {
        Admission {
            users: cfg.users.clone(),
            allow: cfg.allow.clone(),
        }
    }

    pub fn peer_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    pub fn auth_required(&self) -> bool {
        !self.users.is_empty()
    }

    pub fn check_user(&self, user: &[u8], pass: &[u8]) -> bool {
        let mut ok = false;
        for c in &self.users {
            ok |= ct_eq(c.username.as_bytes(), user) & ct_eq(c.password.as_bytes(), pass);
        }
        ok
    }

    /// Checks a `Proxy-Authorization` value (Basic only).
    pub fn check_proxy_authorization(&self, value: Option<&[u8]>) -> bool {
        if !self.auth_required() {
            return true;
        }
        let Some(v) = value else { return false };
        let Ok(v) = std::str::from_utf8(v) else {
            return false;
        };
        let mut parts = v.trim().splitn(2, ' ');
        let scheme = parts.next().unwrap_or("");
        let token = parts.next().unwrap_or("").trim();
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(token) else {
            return false;
        };
        let Some(i) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        self.check_user(&decoded[..i], &decoded[i + 1..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_and_allow_list() {
        let cfg = crate::config::AdmissionSettings {
            users: vec![Credentials {
                username: "al".into(),
                password: "p:w".into(),
            }],
            allow: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let a = Admission::new(&cfg);
        let good = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("al:p:w")
        );
        assert!(a.check_proxy_authorization(Some(good.as_bytes())));
        assert!(!a.check_proxy_authorization(Some(b"Basic YWw6eA==")));
        assert!(!a.check_proxy_authorization(Some(b"Bearer x")));
        assert!(!a.check_proxy_authorization(None));
        assert!(a.peer_allowed("10.1.2.3".parse().unwrap()));
        assert!(a.peer_allowed("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!a.peer_allowed("192.168.1.1".parse().unwrap()));
    }
}
