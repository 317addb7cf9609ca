//! TEMPORARY stub, replaced by the envcfg branch.
#[derive(Debug, Clone, Default)]
pub struct NoProxy { entries: Vec<String> }
impl NoProxy {
    pub fn parse<I: IntoIterator<Item = S>, S: AsRef<str>>(entries: I) -> Self {
        NoProxy { entries: entries.into_iter().map(|s| s.as_ref().trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect() }
    }
    pub fn from_env_value(v: &str) -> Self { Self::parse(v.split(',')) }
    pub fn bypass(&self, host: &str, _port: u16) -> bool {
        let h = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if h == "localhost" { return true; }
        if let Ok(ip) = h.parse::<std::net::IpAddr>() { if ip.is_loopback() { return true; } }
        self.entries.iter().any(|e| e == "*" || h == *e || h.ends_with(&format!(".{}", e.trim_start_matches('.'))))
    }
}
