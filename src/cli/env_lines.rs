//! `proxyguard env`: the lines that point applications at the gateway, in
//! the syntax of a POSIX shell, PowerShell or cmd.exe.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::schema::Protocol;

/// `--shell` of `proxyguard env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// POSIX sh, bash, zsh: `export NAME='value'`.
    Sh,
    /// PowerShell: `$env:NAME = 'value'`.
    Powershell,
    /// Windows cmd.exe: `set NAME=value`.
    Cmd,
}

/// What a client should dial: the wildcard addresses become loopback.
fn reachable(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v) if v.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        IpAddr::V6(v) if v.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        _ => a,
    }
}

/// The variables (name, value) for the first HTTP-capable listener (HTTP_PROXY,
/// HTTPS_PROXY, NO_PROXY), or `ALL_PROXY=socks5h://…` when only SOCKS5 listens.
pub fn variables(listeners: &[(SocketAddr, Protocol)]) -> Vec<(&'static str, String)> {
    let no_proxy = "localhost,127.0.0.1,::1".to_string();
    // A plaintext HTTP listener first; else a TLS-only one (`https://`).
    let http = listeners
        .iter()
        .find(|(_, p)| matches!(p, Protocol::Http | Protocol::Mixed))
        .map(|(a, _)| format!("http://{}", reachable(*a)));
    let https = || {
        listeners
            .iter()
            .find(|(_, p)| *p == Protocol::Https)
            .map(|(a, _)| format!("https://{}", reachable(*a)))
    };
    if let Some(url) = http.or_else(https) {
        return vec![
            ("HTTP_PROXY", url.clone()),
            ("HTTPS_PROXY", url),
            ("NO_PROXY", no_proxy),
        ];
    }
    match listeners.first() {
        Some((a, _)) => vec![
            ("ALL_PROXY", format!("socks5h://{}", reachable(*a))),
            ("NO_PROXY", no_proxy),
        ],
        None => Vec::new(),
    }
}

fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// Renders the variables for `shell`. The POSIX form sets the lower-case
/// names too (curl reads only `http_proxy`); Windows names are case-blind.
pub fn render(vars: &[(&'static str, String)], shell: Shell) -> String {
    let mut out = String::new();
    for (k, v) in vars {
        match shell {
            Shell::Sh => {
                out.push_str(&format!("export {k}={}\n", sh_quote(v)));
                out.push_str(&format!(
                    "export {}={}\n",
                    k.to_ascii_lowercase(),
                    sh_quote(v)
                ));
            }
            Shell::Powershell => out.push_str(&format!("$env:{k} = '{}'\n", v.replace('\'', "''"))),
            Shell::Cmd => out.push_str(&format!("set {k}={v}\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_listener_gives_http_and_https_proxy_in_each_shell() {
        let l = [("0.0.0.0:8080".parse().unwrap(), Protocol::Mixed)];
        let v = variables(&l);
        assert_eq!(v[0], ("HTTP_PROXY", "http://127.0.0.1:8080".to_string()));
        let sh = render(&v, Shell::Sh);
        assert!(
            sh.contains("export HTTPS_PROXY='http://127.0.0.1:8080'\n"),
            "{sh}"
        );
        assert!(
            sh.contains("export https_proxy='http://127.0.0.1:8080'\n"),
            "{sh}"
        );
        let ps = render(&v, Shell::Powershell);
        assert!(
            ps.contains("$env:HTTPS_PROXY = 'http://127.0.0.1:8080'\n"),
            "{ps}"
        );
        let cmd = render(&v, Shell::Cmd);
        assert!(
            cmd.contains("set NO_PROXY=localhost,127.0.0.1,::1\n"),
            "{cmd}"
        );
    }

    #[test]
    fn socks_only_gives_all_proxy() {
        let l = [("[::]:1080".parse().unwrap(), Protocol::Socks5)];
        let v = variables(&l);
        assert_eq!(v[0], ("ALL_PROXY", "socks5h://[::1]:1080".to_string()));
    }

    #[test]
    fn tls_only_listener_gives_an_https_proxy_url() {
        let l = [
            ("127.0.0.1:1080".parse().unwrap(), Protocol::Socks5),
            ("127.0.0.1:3129".parse().unwrap(), Protocol::Https),
        ];
        let v = variables(&l);
        assert_eq!(v[0], ("HTTP_PROXY", "https://127.0.0.1:3129".to_string()));
        assert_eq!(v[1], ("HTTPS_PROXY", "https://127.0.0.1:3129".to_string()));
    }
}
