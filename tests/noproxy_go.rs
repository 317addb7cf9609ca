//! Differential test: our `NoProxy` / `ProxyEnv` against Go's
//! `net/http.ProxyFromEnvironment` (the vendored
//! `golang.org/x/net/http/httpproxy`).
//!
//! Every case carries the expected answer, so the Rust side is always
//! checked. When `go` is installed, the oracle in `tests/go/noproxy` is
//! built offline (GO111MODULE=off, temp GOPATH, no proxy, std lib only) and
//! run once per environment setting — Go caches the environment in a
//! `sync.Once` — and must agree on every case.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use proxyguard::config::env::ProxyEnv;
use proxyguard::config::noproxy::NoProxy;

/// An environment: variable name and value pairs.
type EnvVars = Vec<(&'static str, &'static str)>;

const HTTP_PROXY: &str = "http://proxy.test:3128";
const HTTPS_PROXY: &str = "http://sproxy.test:3129";

/// `Some(no_proxy)`: standard HTTP(S)_PROXY plus this NO_PROXY, and the
/// `NoProxy::bypass` answer is checked too. `None`: the `env` list alone.
struct Case {
    no_proxy: Option<&'static str>,
    env: &'static [(&'static str, &'static str)],
    url: &'static str,
    /// `None` = direct.
    expect: Option<&'static str>,
}

const fn np(no_proxy: &'static str, url: &'static str, direct: bool) -> Case {
    let expect = if direct {
        None
    } else if matches!(url.as_bytes()[4], b's') {
        Some(HTTPS_PROXY)
    } else {
        Some(HTTP_PROXY)
    };
    Case {
        no_proxy: Some(no_proxy),
        env: &[],
        url,
        expect,
    }
}

const fn ev(
    env: &'static [(&'static str, &'static str)],
    url: &'static str,
    expect: Option<&'static str>,
) -> Case {
    Case {
        no_proxy: None,
        env,
        url,
        expect,
    }
}

const DIRECT: bool = true;
const PROXY: bool = false;

fn cases() -> Vec<Case> {
    vec![
        // Domain: itself and subdomains, at a dot boundary only.
        np("example.com", "http://example.com/", DIRECT),
        np("example.com", "http://www.example.com/", DIRECT),
        np("example.com", "https://a.b.example.com/", DIRECT),
        np("example.com", "http://notexample.com/", PROXY),
        np("example.com", "http://example.com./", PROXY),
        np("example.com", "http://example.org/", PROXY),
        // Leading dot and `*.`: subdomains only.
        np(".example.com", "http://example.com/", PROXY),
        np(".example.com", "http://x.example.com/", DIRECT),
        np("*.example.com", "http://example.com/", PROXY),
        np("*.example.com", "https://x.example.com/", DIRECT),
        // `*` alone.
        np("*", "http://anything.test/", DIRECT),
        np("*", "https://1.2.3.4/", DIRECT),
        // Ports, including scheme defaults.
        np("example.com:8080", "http://example.com:8080/", DIRECT),
        np("example.com:8080", "http://example.com/", PROXY),
        np("example.com:8080", "https://x.example.com:8080/", DIRECT),
        np("example.com:443", "https://example.com/", DIRECT),
        np("example.com:443", "http://example.com/", PROXY),
        np("example.com:443", "http://example.com:443/", DIRECT),
        np("example.com:80", "http://example.com/", DIRECT),
        // IPv4, CIDR, IP:port, IPv4-mapped hosts.
        np(
            "10.0.0.0/8,192.168.1.1,172.16.0.1:8443",
            "http://10.20.30.40/",
            DIRECT,
        ),
        np(
            "10.0.0.0/8,192.168.1.1,172.16.0.1:8443",
            "http://11.0.0.1/",
            PROXY,
        ),
        np(
            "10.0.0.0/8,192.168.1.1,172.16.0.1:8443",
            "http://192.168.1.1:9999/",
            DIRECT,
        ),
        np(
            "10.0.0.0/8,192.168.1.1,172.16.0.1:8443",
            "https://172.16.0.1:8443/",
            DIRECT,
        ),
        np(
            "10.0.0.0/8,192.168.1.1,172.16.0.1:8443",
            "https://172.16.0.1/",
            PROXY,
        ),
        np(
            "10.0.0.0/8,192.168.1.1,172.16.0.1:8443",
            "http://[::ffff:10.1.1.1]/",
            DIRECT,
        ),
        // IPv6, CIDR v6, [v6]:port, bracketed v6 without port.
        np(
            "2001:db8::/32,fe80::1,[2001:db9::1]:8080,[2001:dba::1]",
            "http://[2001:db8::5]/",
            DIRECT,
        ),
        np(
            "2001:db8::/32,fe80::1,[2001:db9::1]:8080,[2001:dba::1]",
            "http://[2001:db7::5]/",
            PROXY,
        ),
        np(
            "2001:db8::/32,fe80::1,[2001:db9::1]:8080,[2001:dba::1]",
            "http://[FE80::1]:1234/",
            DIRECT,
        ),
        np(
            "2001:db8::/32,fe80::1,[2001:db9::1]:8080,[2001:dba::1]",
            "http://[2001:db9::1]:8080/",
            DIRECT,
        ),
        np(
            "2001:db8::/32,fe80::1,[2001:db9::1]:8080,[2001:dba::1]",
            "http://[2001:db9::1]/",
            PROXY,
        ),
        np(
            "2001:db8::/32,fe80::1,[2001:db9::1]:8080,[2001:dba::1]",
            "http://[2001:dba::1]/",
            PROXY,
        ),
        // localhost and loopback are never proxied (case-sensitively!).
        np("", "http://localhost/", DIRECT),
        np("", "http://localhost:8080/", DIRECT),
        np("", "http://127.0.0.1/", DIRECT),
        np("", "http://127.1.2.3:99/", DIRECT),
        np("", "http://[::1]/", DIRECT),
        np("", "http://[::ffff:127.0.0.1]/", DIRECT),
        np("", "http://LOCALHOST/", PROXY),
        np("", "https://example.com/", PROXY),
        // Case, spaces and empty entries.
        np(
            " Example.COM , ,  .Internal.Corp ,",
            "http://example.com/",
            DIRECT,
        ),
        np(
            " Example.COM , ,  .Internal.Corp ,",
            "http://a.internal.corp/",
            DIRECT,
        ),
        np(
            " Example.COM , ,  .Internal.Corp ,",
            "http://EXAMPLE.com/",
            DIRECT,
        ),
        np(
            " Example.COM , ,  .Internal.Corp ,",
            "http://internal.corp/",
            PROXY,
        ),
        // Domain rules apply to IP hosts by suffix.
        np("2.3.4", "http://1.2.3.4/", DIRECT),
        // Malformed entries.
        np(":80,foo.com:,bar.com:abc", "http://x.test/", PROXY),
        np(":80,foo.com:,bar.com:abc", "http://foo.com:81/", DIRECT),
        np(":80,foo.com:,bar.com:abc", "http://bar.com/", PROXY),
        np("010.0.0.1", "http://10.0.0.1/", PROXY),
        // An IPv4-mapped /96 covers all of IPv4.
        np("::ffff:0:0/96", "http://8.8.8.8/", DIRECT),
        np("::ffff:0:0/96", "http://[2001:db8::1]/", PROXY),
        // Trailing dot in the entry.
        np("example.com.", "http://example.com./", DIRECT),
        np("example.com.", "http://example.com/", PROXY),
        // Environment precedence and normalisation.
        ev(
            &[("http_proxy", "proxy:3128")],
            "http://example.com/",
            Some("http://proxy:3128"),
        ),
        ev(&[("HTTP_PROXY", HTTP_PROXY)], "https://example.com/", None),
        ev(
            &[
                ("HTTP_PROXY", "http://up:1"),
                ("http_proxy", "http://low:2"),
            ],
            "http://example.com/",
            Some("http://up:1"),
        ),
        ev(
            &[("HTTPS_PROXY", "socks5://s:1080")],
            "https://example.com/",
            Some("socks5://s:1080"),
        ),
        ev(
            &[("HTTPS_PROXY", "10.0.0.1:3128")],
            "https://example.com/",
            Some("http://10.0.0.1:3128"),
        ),
        ev(
            &[
                ("HTTPS_PROXY", "http://s:1"),
                ("NO_PROXY", "a.test"),
                ("no_proxy", "b.test"),
            ],
            "https://b.test/",
            Some("http://s:1"),
        ),
        ev(
            &[
                ("HTTPS_PROXY", "http://s:1"),
                ("NO_PROXY", "a.test"),
                ("no_proxy", "b.test"),
            ],
            "https://a.test/",
            None,
        ),
        ev(
            &[("https_proxy", "http://s:1"), ("HTTPS_PROXY", "")],
            "https://example.com/",
            Some("http://s:1"),
        ),
        ev(&[("HTTP_PROXY", HTTP_PROXY)], "ftp://example.com/", None),
    ]
}

impl Case {
    fn env(&self) -> EnvVars {
        match self.no_proxy {
            Some(no_proxy) => vec![
                ("HTTP_PROXY", HTTP_PROXY),
                ("HTTPS_PROXY", HTTPS_PROXY),
                ("NO_PROXY", no_proxy),
            ],
            None => self.env.to_vec(),
        }
    }
}

/// Splits `scheme://host[:port]/...` without normalising the host (the
/// `url` crate would lower-case it and hide Go's `LOCALHOST` quirk).
fn split_url(url: &str) -> (&str, &str, u16) {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(end) = authority.find(']') {
        let port = authority[end + 1..].strip_prefix(':');
        (&authority[..=end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = port.map_or_else(
        || match scheme {
            "https" => 443,
            "ftp" => 21,
            _ => 80,
        },
        |p| p.parse().expect("port"),
    );
    (scheme, host, port)
}

fn rust_answer(case: &Case) -> Option<String> {
    let env: HashMap<&str, &str> = case.env().into_iter().collect();
    let penv = ProxyEnv::from_lookup(|k| env.get(k).map(|v| v.to_string()));
    let (scheme, host, port) = split_url(case.url);
    let answer = penv.proxy_for(scheme, host, port).map(|p| p.url.clone());
    if let Some(no_proxy) = case.no_proxy {
        let bypass = NoProxy::from_env_value(no_proxy).bypass(host, port);
        assert_eq!(
            bypass,
            answer.is_none(),
            "NoProxy::bypass and ProxyEnv::proxy_for disagree on {no_proxy:?} {}",
            case.url
        );
    }
    answer
}

#[test]
fn rust_matches_expected_table() {
    let cases = cases();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for case in &cases {
        let got = rust_answer(case);
        if got.as_deref() != case.expect {
            failures.push(format!(
                "env {:?} url {}: expected {:?}, got {:?}",
                case.env(),
                case.url,
                case.expect,
                got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn go_available() -> bool {
    Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds the Go oracle offline into `dir`.
fn build_oracle(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/noproxy/main.go");
    let bin = dir.join("noproxy-oracle");
    // A cache under CARGO_TARGET_TMPDIR keeps re-runs fast; it only holds
    // compiler output.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache");
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("GOCACHE", &cache)
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "")
        .env("GO111MODULE", "off")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Runs the oracle with exactly `env` and one URL per line.
fn go_answers(bin: &Path, env: &[(&str, &str)], urls: &[&str]) -> Vec<Option<String>> {
    let mut child = Command::new(bin)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn oracle");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{}\n", urls.join("\n")).as_bytes())
        .expect("write urls");
    drop(stdin);
    let out = child.wait_with_output().expect("oracle output");
    assert!(out.status.success(), "oracle failed");
    let text = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<Option<String>> = text
        .lines()
        .map(|line| match line.strip_prefix("PROXY ") {
            Some(url) => Some(url.to_owned()),
            None => {
                assert_eq!(line, "DIRECT", "unexpected oracle output");
                None
            }
        })
        .collect();
    assert_eq!(lines.len(), urls.len(), "oracle answered {text:?}");
    lines
}

#[test]
fn rust_agrees_with_go() {
    if !go_available() {
        eprintln!(
            "\n!!!!! SKIPPING rust_agrees_with_go: `go` is not installed, \
             so NO_PROXY semantics are NOT being compared with Go !!!!!\n"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = build_oracle(dir.path());

    // Group cases by environment: one Go process per group.
    let cases = cases();
    let mut groups: Vec<(EnvVars, Vec<usize>)> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let env = case.env();
        match groups.iter_mut().find(|(e, _)| *e == env) {
            Some((_, idx)) => idx.push(i),
            None => groups.push((env, vec![i])),
        }
    }

    let mut compared = 0;
    let mut failures = Vec::new();
    for (env, idx) in &groups {
        let urls: Vec<&str> = idx.iter().map(|&i| cases[i].url).collect();
        let go = go_answers(&bin, env, &urls);
        for (&i, go) in idx.iter().zip(go) {
            compared += 1;
            let rust = rust_answer(&cases[i]);
            if rust != go {
                failures.push(format!(
                    "env {env:?} url {}: go {go:?}, rust {rust:?}",
                    cases[i].url
                ));
            }
        }
    }
    eprintln!(
        "compared {compared} cases with Go, {} mismatches",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
