//! WebSocket (any `Upgrade`) through the gateway, against a real Python
//! `websockets` echo server: an absolute-form upgrade relayed as a tunnel
//! after `101` (direct and through squid), the `websockets` client through
//! CONNECT, the tunnel idle timeout, and non-101 answers passed through
//! (tinyproxy strips upgrade headers, so the origin refuses with 426).

mod support;

use std::io::Read;
use std::time::Duration;

use support::websocket::*;
use support::*;

/// A gateway with one HTTP listener; `top` holds top-level keys and
/// `tables` any tables after the upstreams.
fn gateway(upstreams: &[String], top: &str, tables: &str) -> Proxyguard {
    let addr = free_addr();
    let mut cfg = format!("{top}\n[[listen]]\naddr = \"{addr}\"\nprotocol = \"http\"\n\n");
    for (i, u) in upstreams.iter().enumerate() {
        cfg.push_str(&format!("[[upstream]]\nname = \"u{i}\"\nurl = \"{u}\"\n\n"));
    }
    cfg.push_str(tables);
    Proxyguard::start(&cfg)
}

/// Text and binary messages echoed, then the close handshake, then EOF.
fn chat_and_close(s: &mut std::net::TcpStream) {
    send_frame(s, 0x1, b"hello through proxyguard");
    assert_eq!(
        read_frame(s).unwrap(),
        (0x1, b"hello through proxyguard".to_vec())
    );
    let bin: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
    send_frame(s, 0x2, &bin);
    assert_eq!(read_frame(s).unwrap(), (0x2, bin));
    send_frame(s, 0x8, &1000u16.to_be_bytes());
    let (op, payload) = read_frame(s).unwrap();
    assert_eq!((op, &payload[..2]), (0x8, &1000u16.to_be_bytes()[..]));
    // The server closes the TCP connection after the close handshake.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "bytes after close: {rest:?}");
    // And the client closes its side, which ends the tunnel.
    s.shutdown(std::net::Shutdown::Both).unwrap();
}

/// The access-log `tunnel` line of the upgrade, once it is written.
fn tunnel_line(pg: &Proxyguard) -> serde_json::Value {
    let mut found = None;
    wait_until(Duration::from_secs(20), || {
        found = pg
            .json_logs()
            .into_iter()
            .find(|l| l["kind"] == "upgrade" && l["message"] == "tunnel");
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no upgrade tunnel line:\n{}", pg.logs()))
}

#[test]
fn absolute_form_upgrade_is_relayed_after_101() {
    let ws = WsEcho::start();
    let pg = gateway(&[], "", "[http]\nvia = true\n");
    let (mut s, head) = raw_upgrade(pg.addr(), ws.addr(), "/raw");
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}\n{}", pg.logs());
    assert!(
        lower.contains(&format!(
            "sec-websocket-accept: {}",
            WS_ACCEPT.to_ascii_lowercase()
        )),
        "{head}"
    );
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(lower.contains("via: 1.1 proxyguard"), "{head}");
    chat_and_close(&mut s);
    let line = tunnel_line(&pg);
    assert_eq!(line["outcome"], "closed", "{line}");
    assert!(line["bytes_up"].as_u64().unwrap() > 300, "{line}");
    assert!(line["bytes_down"].as_u64().unwrap() > 300, "{line}");
    assert!(
        pg.json_logs()
            .iter()
            .any(|l| l["message"] == "request" && l["status"] == 101),
        "{}",
        pg.logs()
    );
}

#[test]
fn a_refused_upgrade_is_a_normal_response_with_the_upgrade_headers_sent() {
    // The echo origin answers 200 to anything and shows what it received.
    let echo = EchoServer::start();
    let pg = gateway(&[], "", "");
    let (mut s, head) = raw_upgrade(pg.addr(), echo.addr(), "/plain");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("upgrade: websocket"), "{body}");
    assert!(body.contains("connection: upgrade"), "{body}");
    assert!(
        body.contains(&format!("sec-websocket-key: {WS_KEY}")),
        "{body}"
    );
}

#[test]
fn websockets_client_through_connect() {
    let ws = WsEcho::start();
    let pg = gateway(&[], "", "");
    let out = ws_client_via_connect(pg.addr(), ws.addr());
    assert_eq!(out.code, 0, "{out:?}\n{}", pg.logs());
    assert!(out.stdout.contains("echoed 70000"), "{out:?}");
    assert!(out.stdout.contains("closed 1000"), "{out:?}");
}

#[test]
fn idle_timeout_cuts_an_idle_upgraded_connection() {
    let ws = WsEcho::start();
    let pg = gateway(&[], "", "[timeouts]\nidle = \"1s\"\n");
    let (mut s, head) = raw_upgrade(pg.addr(), ws.addr(), "/idle");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}\n{}", pg.logs());
    send_frame(&mut s, 0x1, b"one");
    assert_eq!(read_frame(&mut s).unwrap(), (0x1, b"one".to_vec()));
    // Now silent both ways: the gateway closes the tunnel (read timeout of
    // the socket, 15 s, is only a hang guard).
    let mut buf = [0u8; 64];
    let n = s
        .read(&mut buf)
        .expect("the gateway should close, not time out");
    assert_eq!(n, 0, "unexpected bytes {:?}", &buf[..n]);
    let line = tunnel_line(&pg);
    assert_eq!(line["outcome"], "idle_timeout", "{line}");
}

#[test]
fn upgrade_through_a_squid_upstream() {
    let ws = WsEcho::start();
    let squid = SquidUpgrades::start();
    let pg = gateway(&[squid.url()], "bypass_loopback = false", "");
    let (mut s, head) = raw_upgrade(pg.addr(), ws.addr(), "/via-squid");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}\n{}", pg.logs());
    chat_and_close(&mut s);
    let line = tunnel_line(&pg);
    assert_eq!(line["upstream"], "u0", "{line}");
}

#[test]
fn tinyproxy_strips_upgrades_and_the_refusal_is_passed_through() {
    // tinyproxy 1.11 drops Connection/Upgrade in plain forwarding: the
    // origin sees no upgrade and answers 426, which reaches the client.
    let ws = WsEcho::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let pg = gateway(&[tiny.url()], "bypass_loopback = false", "");
    let (_s, head) = raw_upgrade(pg.addr(), ws.addr(), "/via-tiny");
    assert!(head.starts_with("HTTP/1.1 426"), "{head}\n{}", pg.logs());
    assert!(head.to_ascii_lowercase().contains("tinyproxy"), "{head}");
}

#[test]
fn an_upgrade_is_never_hedged_nor_retried_once_sent() {
    // u0 accepts and never answers; u1 is a working tinyproxy. A safe GET
    // would be hedged (or retried after the response-head timeout) on u1;
    // an upgrade request is sent once and the client gets the 504.
    let ws = WsEcho::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let silent = support::faults::FaultRelay::start(tiny.addr(), support::faults::Fault::Silent);
    let u1 = support::faults::FaultRelay::start(tiny.addr(), support::faults::Fault::Pass);
    let pg = gateway(
        &[silent.url("http"), u1.url("http")],
        "bypass_loopback = false",
        "[pool]\nrace_after = \"off\"\nhedge_after = \"100ms\"\n\
         [health]\nenabled = false\n[timeouts]\nresponse_head = \"2s\"\n",
    );
    let (_s, head) = raw_upgrade(pg.addr(), ws.addr(), "/once");
    assert!(head.starts_with("HTTP/1.1 504"), "{head}\n{}", pg.logs());
    assert_eq!(silent.accepted(), 1);
    assert_eq!(u1.accepted(), 0, "the upgrade went to a second upstream");
    // The same setup hedges a plain GET on u1: the check above can fail.
    let echo = EchoServer::start();
    let r = curl(&["-x", &pg.url(), &format!("{}/hedged", echo.url())]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    assert!(u1.accepted() >= 1);
}
