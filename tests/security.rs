//! Security: connection limits that tunnels cannot escape, idle-flood
//! shedding, the admin API's hardening, SSRF protection and the `[acl]`,
//! brute-force bans, Host rewriting and SOCKS5 replies — with curl and raw
//! sockets against a real `proxyguard serve`, all on loopback.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::rawclient::*;
use support::*;

const ADMIN_TOKEN: &str = "admintoken-0123456789";

fn config(listen: SocketAddr, admin: SocketAddr, top: &str, tables: &str) -> String {
    format!(
        "{top}\n[[listen]]\naddr = \"{listen}\"\nprotocol = \"mixed\"\n\n[admin]\naddr = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\n{tables}\n"
    )
}

fn start(top: &str, tables: &str) -> (Proxyguard, SocketAddr) {
    let admin = free_addr();
    let pg = Proxyguard::start(&config(free_addr(), admin, top, tables));
    assert!(wait_port(admin, Duration::from_secs(10)), "{}", pg.logs());
    (pg, admin)
}

fn metrics(admin: SocketAddr) -> String {
    curl(&[&format!("http://{admin}/metrics")]).body
}

#[test]
fn tunnels_hold_their_connection_slot_and_per_client_limit() {
    let echo = EchoServer::start();
    let (pg, _admin) = start(
        "",
        "[limits]\nmax_connections = 4\nmax_connections_per_client = 3\n",
    );
    let p = pg.addr();
    let target = echo.addr().to_string();
    let mut held = Vec::new();
    for _ in 0..3 {
        let (s, h) = connect_tunnel(p, "127.0.0.1", &target);
        assert!(h.starts_with("HTTP/1.1 200"), "{h:?}\n{}", pg.logs());
        held.push(s);
    }
    // A fourth from the same client: over max_connections_per_client.
    let (_s, h) = connect_tunnel(p, "127.0.0.1", &target);
    assert_eq!(h, "", "per-client limit must refuse the 4th connection");
    // Another client takes the last global slot with a SOCKS5 tunnel.
    let (s, code) = socks5_domain(p, "127.0.0.2", b"127.0.0.1", echo.port());
    assert_eq!(code, Some(0), "{}", pg.logs());
    held.push(s);
    // Global limit reached, all slots busy with live tunnels: a fifth
    // client is not served while they live ...
    let mut waiting = connect_from("127.0.0.3", p);
    waiting
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut b = [0u8; 1];
    let early = waiting.read(&mut b);
    assert!(
        early.is_err(),
        "a 5th connection was served while 4 tunnels hold all slots: {early:?}"
    );
    // ... and is served as soon as one tunnel ends.
    drop(held.remove(0));
    waiting
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let h = read_head(&mut waiting);
    assert!(h.starts_with("HTTP/1.1 200"), "{h:?}\n{}", pg.logs());
}

#[test]
fn at_the_limit_connections_without_a_request_are_shed_first() {
    let echo = EchoServer::start();
    let (pg, admin) = start(
        "",
        "[limits]\nmax_connections = 3\n\n[timeouts]\nclient_header = \"60s\"\n",
    );
    let p = pg.addr();
    // Three slow clients: a partial request head, never finished.
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = connect_from(&format!("127.0.0.{}", 10 + i), p);
            s.write_all(b"GET ").unwrap();
            s
        })
        .collect();
    // Wait until all three hold a slot.
    assert!(wait_until(Duration::from_secs(10), || metrics(admin)
        .lines()
        .any(
            |l| l.starts_with("proxyguard_client_connections_active 3")
        )));
    // A real client is served (without shedding it would wait 60 s).
    let r = curl(&[
        "--max-time",
        "20",
        "-x",
        &format!("http://{p}"),
        &format!("{}/ok", echo.url()),
    ]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    // The oldest idle connection was the one closed.
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(idle[0].read(&mut b), Ok(0) | Err(_)));
    assert!(metrics(admin).contains("proxyguard_connections_shed_total"));
}

fn check(config_text: &str) -> CmdOut {
    let dir = temp_dir("check", false);
    let p = dir.path().join("c.toml");
    std::fs::write(&p, config_text).unwrap();
    proxyguard_run(
        &["check", "--config", p.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    )
}

#[test]
fn unsafe_settings_are_refused_at_load() {
    let base = "[[listen]]\naddr = \"127.0.0.1:0\"\n";
    let cases = [
        ("[admin]\ntoken = \"\"\n", "admin.token"),
        (
            "[admin]\naddr = \"0.0.0.0:19090\"\ntoken = \"short\"\n",
            "at least 16",
        ),
        ("[auth]\nusers = [\"alice:\"]\n", "empty password"),
        ("[auth]\nmax_failures = 0\n", "auth.max_failures"),
        ("[acl]\ndeny = [\"what is this\"]\n", "acl.deny"),
        (
            "[limits]\nmax_connections_per_client = 0\n",
            "max_connections_per_client",
        ),
    ];
    for (extra, want) in cases {
        let out = check(&format!("{base}{extra}"));
        assert_ne!(out.code, 0, "{extra} was accepted: {}", out.stdout);
        assert!(out.stderr.contains(want), "{extra}: {}", out.stderr);
    }
    let ok = check(&format!(
        "{base}[admin]\naddr = \"0.0.0.0:19090\"\ntoken = \"{ADMIN_TOKEN}\"\n"
    ));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    // Non-regular and oversized files are refused without reading them.
    let out = proxyguard_run(
        &["check", "--config", "/dev/zero"],
        &[],
        Duration::from_secs(20),
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    let dir = temp_dir("big", false);
    let big = dir.path().join("big.toml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(5 * 1024 * 1024)
        .unwrap();
    let out = proxyguard_run(
        &["check", "--config", big.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("MiB limit"), "{}", out.stderr);
}

#[test]
fn admin_api_checks_token_host_origin_and_sends_csp() {
    let (pg, admin) = start("", "");
    let url = format!("http://{admin}");
    let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let r = curl(&["-X", "POST", &format!("{url}/reload")]);
    assert_eq!(r.status, 401, "{r:?}");
    let r = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer,
        "-H",
        "Origin: http://evil.example",
        &format!("{url}/reload"),
    ]);
    assert_eq!(r.status, 403, "cross-origin POST: {r:?}");
    let r = curl(&["-X", "POST", "-H", &bearer, &format!("{url}/reload")]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    // DNS rebinding: a foreign Host is refused, even for reads.
    let r = curl(&["-H", "Host: evil.example", &format!("{url}/status")]);
    assert_eq!(r.status, 403, "{r:?}");
    let r = curl(&[
        "-H",
        &format!("Host: localhost:{}", admin.port()),
        &format!("{url}/status"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&[&format!("{url}/")]);
    assert_eq!(r.status, 200);
    let csp = r
        .headers
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-security-policy:")
        })
        .unwrap_or_else(|| panic!("no CSP header: {}", r.headers));
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
}

/// Spellings of 127.0.0.1 (and friends) a resolver or kernel accepts.
const SPELLINGS: &[&str] = &[
    "127.0.0.1",
    "localhost",
    "LocalHost.",
    "0x7f.1",
    "0x7f000001",
    "2130706433",
    "017700000001",
    "0177.0.0.1",
    "127.1",
    "0",
    "0.0.0.0",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::]",
];

#[test]
fn ssrf_clients_cannot_reach_the_admin_api_or_listeners_by_any_spelling() {
    let echo = EchoServer::start();
    let (pg, admin) = start("", "");
    let p = pg.addr();
    let proxy = format!("http://{p}");
    // The control: an ordinary loopback target works through this listener.
    let r = curl(&["-x", &proxy, &format!("{}/fine", echo.url())]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    for port in [admin.port(), p.port()] {
        for host in SPELLINGS {
            let authority = format!("{host}:{port}");
            // Absolute-form, exact bytes (curl would normalise the host).
            let (_s, h) = raw(
                p,
                "127.0.0.1",
                &format!("GET http://{authority}/status HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
            );
            assert!(h.starts_with("HTTP/1.1 403"), "GET {authority}: {h:?}");
            assert!(
                h.to_ascii_lowercase()
                    .contains("proxy-status: proxyguard; error=destination_ip_prohibited"),
                "{h}"
            );
            let (_s, h) = connect_tunnel(p, "127.0.0.1", &authority);
            assert!(h.starts_with("HTTP/1.1 403"), "CONNECT {authority}: {h:?}");
            let name = host.trim_start_matches('[').trim_end_matches(']');
            let (_s, code) = socks5_domain(p, "127.0.0.1", name.as_bytes(), port);
            assert_eq!(code, Some(2), "SOCKS5 {name}:{port}");
        }
        // And with real curl: HTTP, CONNECT, SOCKS5 (local and remote names).
        let status_url = format!("http://127.0.0.1:{port}/status");
        let r = curl(&["-x", &proxy, &status_url]);
        assert_eq!(r.status, 403, "{r:?}");
        assert!(!r.body.contains("upstreams"), "{r:?}");
        let r = curl(&["-p", "-x", &proxy, &status_url]);
        assert_eq!(r.connect_status, 403, "{r:?}");
        for socks in ["socks5", "socks5h"] {
            let r = curl(&[
                "-x",
                &format!("{socks}://{p}"),
                &format!("http://localhost:{port}/status"),
            ]);
            assert_eq!(r.status, 0, "{socks}: {r:?}");
            // curl 7.88 prints the RFC 1928 reply code: 2 = not allowed by ruleset.
            assert!(r.stderr.contains("(2)"), "{socks}: {r:?}");
        }
    }
    let m = metrics(admin);
    assert!(m.contains("proxyguard_acl_denied_total"), "{m}");
    assert!(
        pg.logs().contains("destination prohibited"),
        "{}",
        pg.logs()
    );
}

#[test]
fn acl_defaults_off_loopback_and_configured_rules() {
    let echo = EchoServer::start();
    // Off loopback (with auth, as required): loopback targets are denied by default.
    let port = free_port();
    let admin = free_addr();
    let pg = Proxyguard::start_with(
        &config(
            format!("0.0.0.0:{port}").parse().unwrap(),
            admin,
            "",
            "[auth]\nusers = [\"alice:wonderland-pw\"]\n",
        ),
        &[],
        &[],
    );
    let proxy = format!("http://alice:wonderland-pw@127.0.0.1:{port}");
    let r = curl(&["-x", &proxy, &format!("{}/x", echo.url())]);
    assert_eq!(r.status, 403, "{r:?}\n{}", pg.logs());
    assert!(r.headers.contains("destination_ip_prohibited"), "{r:?}");
    let r = curl(&["-p", "-x", &proxy, &format!("{}/x", echo.url())]);
    assert_eq!(r.connect_status, 403, "{r:?}");
    let r = curl(&["-x", &proxy, "http://169.254.169.254/latest/meta-data/"]);
    assert_eq!(r.status, 403, "{r:?}");
    let r = curl(&["-x", &proxy, "http://100.100.100.200/latest/meta-data/"]);
    assert_eq!(r.status, 403, "{r:?}");
    drop(pg);

    // Configured: deny a name suffix and a CIDR; CONNECT only to one port.
    let tables = format!(
        "[acl]\ndeny = [\"*.internal\", \"10.0.0.0/8\"]\nconnect_ports = [{}]\n\n[resolve]\n\"db.internal\" = \"127.0.0.1\"\n\"sneaky.example\" = \"10.1.2.3\"\n",
        echo.port()
    );
    let (pg, _admin) = start("", &tables);
    let proxy = format!("http://{}", pg.addr());
    let ok = curl(&["-p", "-x", &proxy, &format!("{}/ok", echo.url())]);
    assert_eq!((ok.connect_status, ok.status), (200, 200), "{ok:?}");
    let r = curl(&[
        "-x",
        &proxy,
        &format!("http://db.internal:{}/x", echo.port()),
    ]);
    assert_eq!(r.status, 403, "{r:?}");
    // A name that resolves into a denied network is refused too.
    let r = curl(&[
        "-x",
        &proxy,
        &format!("http://sneaky.example:{}/x", echo.port()),
    ]);
    assert_eq!(r.status, 403, "{r:?}\n{}", pg.logs());
    let other = free_port();
    let (_s, h) = connect_tunnel(pg.addr(), "127.0.0.1", &format!("127.0.0.1:{other}"));
    assert!(h.starts_with("HTTP/1.1 403"), "{h}");
    let (_s, code) = socks5_domain(pg.addr(), "127.0.0.1", b"127.0.0.1", other);
    assert_eq!(code, Some(2));
}

#[test]
fn failed_logins_lead_to_a_ban_for_http_and_socks5() {
    let echo = EchoServer::start();
    let (pg, admin) = start(
        "",
        "[auth]\nusers = [\"alice:right-password\"]\nmax_failures = 3\nfail_window = \"1m\"\nban_for = \"1m\"\n",
    );
    let p = pg.addr();
    let target = format!("{}/x", echo.url());
    let good = format!("http://alice:right-password@{p}");
    let r = curl(&["-x", &good, &target]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    for _ in 0..3 {
        let r = curl(&["-x", &format!("http://alice:wrong@{p}"), &target]);
        assert_eq!(r.status, 407, "{r:?}");
    }
    // Banned: even the right password gets 429 now, over HTTP and SOCKS5.
    let r = curl(&["-x", &good, &target]);
    assert_eq!(r.status, 429, "{r:?}\n{}", pg.logs());
    let r = curl(&[
        "-x",
        &format!("socks5h://alice:right-password@{p}"),
        &target,
    ]);
    assert_eq!(r.status, 0, "{r:?}");
    // Another client address is not affected.
    let r = curl(&["--interface", "127.0.0.2", "-x", &good, &target]);
    assert_eq!(r.status, 200, "{r:?}");
    let st: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("http://{admin}/status")]).body).unwrap();
    let bans = st["auth_bans"].as_array().expect("auth_bans in /status");
    assert_eq!(bans.len(), 1, "{st}");
    assert_eq!(bans[0]["client"], "127.0.0.1");
    assert!(
        st["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "auth_ban"),
        "{st}"
    );
    assert!(metrics(admin).contains("proxyguard_auth_bans_total"));
}

#[test]
fn socks5_bad_requests_get_rfc1928_replies() {
    let (pg, _admin) = start("", "");
    let p = pg.addr();
    let cases: [(&[u8], u8); 4] = [
        (&[5, 1, 0, 3, 0, 0, 80], 4),
        (&[5, 1, 0, 3, 3, b'a', 0, b'b', 0, 80], 4),
        (&[5, 1, 0, 3, 2, 0xc3, 0x28, 0, 80], 4),
        (&[4, 1, 0, 1, 127, 0, 0, 1, 0, 80], 1),
    ];
    for (req, code) in cases {
        let mut s = connect_from("127.0.0.1", p);
        s.write_all(&[5, 1, 0]).unwrap();
        let mut m = [0u8; 2];
        s.read_exact(&mut m).unwrap();
        s.write_all(req).unwrap();
        let mut r = [0u8; 10];
        s.read_exact(&mut r)
            .unwrap_or_else(|e| panic!("no reply to {req:?}: {e}\n{}", pg.logs()));
        assert_eq!(r[..2], [5, code], "{req:?}");
    }
    let mut long = vec![5, 1, 0, 3, 255];
    long.extend_from_slice(&[b'a'; 255]);
    long.extend_from_slice(&[0, 80]);
    let mut s = connect_from("127.0.0.1", p);
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    s.write_all(&long).unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[..2], [5, 4]);
}

#[test]
fn absolute_form_requests_get_the_targets_host_header() {
    let echo = EchoServer::start();
    let (pg, _admin) = start("", "");
    let r = curl(&[
        "-x",
        &format!("http://{}", pg.addr()),
        "-H",
        "Host: evil.example",
        &format!("{}/h", echo.url()),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.last_request().unwrap();
    assert!(
        seen.contains(&format!("host: 127.0.0.1:{}", echo.port())),
        "{seen}"
    );
    assert!(!seen.contains("evil.example"), "{seen}");
}
