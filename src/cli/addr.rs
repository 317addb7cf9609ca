//! Address arguments: `--listen :PORT`, `--admin ADDR|off`, and the admin
//! base URL of `status`/`reload` given as `host:port` or a URL.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Bad address argument.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("{0:?} is not an address: use IP:PORT, [IPv6]:PORT or :PORT (loopback)")]
    Socket(String),
    #[error("{0:?} is not an admin address: use host:port, :PORT or http://host:port")]
    Admin(String),
}

/// `IP:PORT`, `[IPv6]:PORT`, or `:PORT` meaning 127.0.0.1:PORT (loopback,
/// so nothing is opened to the network by accident).
pub fn parse_socket(s: &str) -> Result<SocketAddr, AddrError> {
    let t = s.trim();
    if let Some(port) = t.strip_prefix(':') {
        return port
            .parse::<u16>()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
            .map_err(|_| AddrError::Socket(s.to_string()));
    }
    t.parse().map_err(|_| AddrError::Socket(s.to_string()))
}

/// `serve --admin`: an address, or `off` to run without the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminArg {
    Off,
    At(SocketAddr),
}

pub fn parse_admin_arg(s: &str) -> Result<AdminArg, AddrError> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(AdminArg::Off);
    }
    parse_socket(s).map(AdminArg::At)
}

/// The admin API base URL from `host:port`, `:PORT` or `http(s)://…`.
pub fn admin_base(s: &str) -> Result<url::Url, AddrError> {
    let t = s.trim();
    let bad = || AddrError::Admin(s.to_string());
    let text = if t.contains("://") {
        t.to_string()
    } else if t.starts_with(':') {
        format!("http://127.0.0.1{t}")
    } else {
        format!("http://{t}")
    };
    let u = url::Url::parse(&text).map_err(|_| bad())?;
    if u.scheme() != "http" || u.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colon_port_is_loopback() {
        assert_eq!(
            parse_socket(":23170").unwrap(),
            "127.0.0.1:23170".parse().unwrap()
        );
        assert_eq!(
            parse_socket("[::1]:8080").unwrap(),
            "[::1]:8080".parse().unwrap()
        );
        assert!(parse_socket(":http").is_err());
        assert!(parse_socket("localhost:80").is_err());
    }

    #[test]
    fn admin_arg_off_or_address() {
        assert_eq!(parse_admin_arg("off").unwrap(), AdminArg::Off);
        assert_eq!(
            parse_admin_arg(":9999").unwrap(),
            AdminArg::At("127.0.0.1:9999".parse().unwrap())
        );
        assert!(parse_admin_arg("of").is_err());
    }

    #[test]
    fn admin_base_without_scheme() {
        assert_eq!(
            admin_base("127.0.0.1:29090").unwrap().as_str(),
            "http://127.0.0.1:29090/"
        );
        assert_eq!(
            admin_base(":29090").unwrap().as_str(),
            "http://127.0.0.1:29090/"
        );
        assert_eq!(
            admin_base("http://localhost:1/x").unwrap().as_str(),
            "http://localhost:1/x"
        );
        assert!(admin_base("ftp://h:1").is_err());
        assert!(admin_base("").is_err());
    }
}
