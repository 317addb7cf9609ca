//! Robustness properties of every parser that untrusted bytes reach, as
//! plain functions over arbitrary input. The cargo-fuzz targets in `fuzz/`
//! and the proptest tests in `tests/fuzz_props.rs` call the same functions,
//! so stable CI checks what the fuzzer explores. Each panics only when a
//! property is broken.

use tokio::io::AsyncWriteExt;

use crate::upstream::{Credentials, Host, Target};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

/// Splits fuzz input into (control byte, rest).
fn split(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((c, rest)) => (*c, rest),
        None => (0, data),
    }
}

/// The SOCKS5 listener's negotiation: never panics; a success is a target
/// with a non-zero port; anything written back is well-formed RFC 1928/1929.
pub fn socks5_server(data: &[u8]) {
    let mut out = Vec::new();
    let r = block_on(async {
        let mut io = tokio::io::join(data, &mut out);
        let r = crate::inbound::socks5::negotiate(&mut io, &crate::inbound::socks5::NoAuth).await;
        let _ = io.flush().await;
        r
    });
    if let Ok(t) = &r {
        assert_ne!(t.port, 0, "accepted port 0");
    }
    if !out.is_empty() {
        assert_eq!(out[0], 5, "reply is not SOCKS5: {out:?}");
    }
    // After the method choice, a request reply (if any) is exactly 10 bytes.
    if out.len() > 2 {
        assert_eq!(out.len(), 12, "bad reply length: {out:?}");
        assert_eq!(out[2], 5);
    }
}

/// Upstream replies: an HTTP CONNECT reply head and a SOCKS5 server's
/// replies, parsed by the connectors. Never panics; a CONNECT success needs
/// a 2xx status line.
pub fn upstream_replies(data: &[u8]) {
    let (ctl, rest) = split(data);
    let target = Target::new(Host::Name("example.com".into()), 443);
    let creds = (ctl & 1 == 1).then(|| Credentials {
        username: "u".into(),
        password: "p".into(),
    });
    let mut sink = Vec::new();
    let r = block_on(async {
        let mut io = tokio::io::join(rest, &mut sink);
        crate::upstream::http_connect::handshake(&mut io, &target, creds.as_ref()).await
    });
    if r.is_ok() {
        let head = String::from_utf8_lossy(rest);
        let status = head.split_whitespace().nth(1).unwrap_or("");
        assert!(
            status.starts_with('2'),
            "CONNECT accepted status {status:?}"
        );
    }
    let mut sink = Vec::new();
    let _ = block_on(async {
        let mut io = tokio::io::join(rest, &mut sink);
        crate::upstream::socks5::handshake(&mut io, &target, creds.as_ref()).await
    });
}

/// NO_PROXY lists, authorities, hosts, upstream URLs, numeric IPv4 forms and
/// redaction: never panic; redaction never shows a URL's password.
pub fn text_parsers(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let np = crate::config::noproxy::NoProxy::from_env_value(&s);
    let _ = np.bypass("example.com", 443);
    let _ = np.bypass("127.0.0.1", 80);
    let _ = Host::parse(&s);
    if let Some(t) = Target::parse_authority(&s, Some(80)) {
        let _ = crate::acl::normalize(&t.host);
        assert!(
            Target::parse_authority(&t.to_string(), None).is_some(),
            "{t} does not re-parse"
        );
    }
    if let Some(ip) = crate::acl::parse_numeric_ipv4(&s) {
        // Every value a numeric form yields is a real IPv4 address, and its
        // plain dotted form maps to itself.
        assert_eq!(crate::acl::parse_numeric_ipv4(&ip.to_string()), Some(ip));
    }
    if let Ok(u) = crate::upstream::UpstreamSpec::parse("fuzz", &s) {
        if let Some(c) = &u.credentials {
            if c.password.len() >= 4 {
                assert!(!u.redacted_url().contains(&c.password), "password shown");
            }
        }
    }
    let red = crate::config::redact::redact(&s);
    if let Some((_, rest)) = s.split_once("://") {
        if let Some((userinfo, _)) = rest.split_once('@') {
            if let Some((_, pass)) = userinfo.split_once(':') {
                let clean = !pass.contains(['@', '/', '?', '#']) && pass.len() >= 4;
                if clean && !rest[..rest.find('@').unwrap_or(0)].contains(['/', '?', '#']) {
                    assert!(!red.contains(&format!(":{pass}@")), "{s:?} -> {red:?}");
                }
            }
        }
    }
    let _ = crate::config::redact::redact_webhook(&s);
}

/// Signer canonicalisation over arbitrary method, URL, headers and body:
/// never panics, deterministic.
pub fn signer(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let mut parts = s.splitn(4, '\n');
    let method = parts.next().unwrap_or("GET");
    let url = parts.next().unwrap_or("/");
    let header = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    let mut req = crate::signer::SignRequest::new(method, url).with_body(body.as_bytes().to_vec());
    if let Some((k, v)) = header.split_once(':') {
        req = req.with_header(k, v);
    }
    let a = crate::signer::acs3::canonical_request(&req);
    assert_eq!(a, crate::signer::acs3::canonical_request(&req));
    let _ = crate::signer::acs3::canonical_uri(req.path());
    let pairs = req.query_pairs();
    let _ = crate::signer::rpc::canonical_query(&pairs);
    let _ = crate::signer::rpc::string_to_sign(method, &pairs);
    let names = crate::signer::apigw::signed_header_names(&req, &[]);
    let _ = crate::signer::apigw::string_to_sign(&req, &names);
    let _ = crate::signer::apigw::url_to_sign(&req);
    let _ = crate::signer::percent_encode(&s);
}

/// Configuration loading: never panics, and neither does rendering an
/// accepted configuration (redacted) for `check`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = crate::config::Config::from_toml(text, "fuzz") {
        let _ = cfg.effective_toml();
    }
}
