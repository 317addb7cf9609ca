//! The TLS listener: `[[listen]] protocol = "https"` (and `"mixed"` with a
//! certificate) against real curl (`--proxy https://…`), with Basic proxy
//! credentials, an untrusted certificate, and a certificate swapped on
//! SIGHUP. Everything on loopback.

mod support;

use std::time::Duration;

use support::websocket::*;
use support::*;

const USER: &str = "alice:s3cret-pw";

/// A gateway whose listener uses copies of `leaf`'s files (so the test can
/// replace them), plus an admin port; `extra` goes after the listener.
struct Gw {
    pg: Proxyguard,
    admin: std::net::SocketAddr,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start(protocol: &str, leaf: &Leaf, extra: &str) -> Gw {
    let dir = temp_dir("tlsgw", false);
    let cert = dir.path().join("gw-cert.pem");
    let key = dir.path().join("gw-key.pem");
    write_file(&cert, &leaf.cert_pem, 0o644);
    write_file(&key, &leaf.key_pem, 0o600);
    let addr = free_addr();
    let admin = free_addr();
    let cfg = format!(
        "[[listen]]\naddr = \"{addr}\"\nprotocol = \"{protocol}\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [admin]\naddr = \"{admin}\"\n\n{extra}\n",
        cert.display(),
        key.display()
    );
    Gw {
        pg: Proxyguard::start(&cfg),
        admin,
        cert,
        key,
        _dir: dir,
    }
}

impl Gw {
    fn https_proxy(&self) -> String {
        format!("https://{}", self.pg.addr())
    }
    /// curl to `url` through the gateway over TLS, trusting `ca`.
    fn curl(&self, ca: &TestCa, url: &str, extra: &[&str]) -> CurlOut {
        let proxy = self.https_proxy();
        let ca = ca.ca_path();
        let mut args = vec![
            "--proxy",
            &proxy,
            "--proxy-cacert",
            ca.to_str().unwrap(),
            "--proxy-user",
            USER,
        ];
        args.extend_from_slice(extra);
        args.push(url);
        curl(&args)
    }
    fn metrics(&self) -> String {
        curl(&[&format!("http://{}/metrics", self.admin)]).body
    }
}

const AUTH: &str = "[auth]\nusers = [\"alice:s3cret-pw\"]\n";

#[test]
fn curl_with_basic_auth_over_https_proxy_plain_and_connect() {
    let ca = TestCa::new();
    let echo = EchoServer::start();
    let tls_echo = EchoServer::tls(&ca);
    let gw = start("https", &ca.default_leaf, AUTH);

    let r = gw.curl(&ca, &format!("{}/over-tls", echo.url()), &[]);
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.pg.logs());
    assert!(r.body.starts_with("GET /over-tls"), "{}", r.body);
    // The credentials were ours: never passed on to the origin.
    assert!(
        !r.body.to_lowercase().contains("proxy-authorization"),
        "{}",
        r.body
    );

    // CONNECT inside the TLS connection, TLS to the origin inside that.
    let origin_ca = ca.ca_path();
    let r = gw.curl(
        &ca,
        &format!("{}/tunnelled", tls_echo.url()),
        &["--cacert", origin_ca.to_str().unwrap()],
    );
    assert_eq!(
        (r.connect_status, r.status),
        (200, 200),
        "{r:?}\n{}",
        gw.pg.logs()
    );
    assert!(r.body.starts_with("GET /tunnelled"), "{}", r.body);

    // Wrong credentials over TLS: 407, and the password never reaches a log.
    let proxy = gw.https_proxy();
    let ca_path = ca.ca_path();
    let r = curl(&[
        "--proxy",
        &proxy,
        "--proxy-cacert",
        ca_path.to_str().unwrap(),
        "--proxy-user",
        "alice:wrong-pw",
        &echo.url(),
    ]);
    assert_eq!(r.status, 407, "{r:?}");
    assert!(!gw.pg.logs().contains("s3cret-pw"), "{}", gw.pg.logs());
}

#[test]
fn untrusted_certificate_fails_the_handshake_and_is_nobodys_upstream_fault() {
    let ca = TestCa::new();
    let stranger = TestCa::with_name("some other CA");
    let echo = EchoServer::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let upstream = format!(
        "bypass_loopback = false\n[[upstream]]\nname = \"tiny\"\nurl = \"{}\"\n",
        tiny.url()
    );
    // Top-level keys must come before the tables: put them first.
    let gw = {
        let dir = temp_dir("tlsgw", false);
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        write_file(&cert, &ca.default_leaf.cert_pem, 0o644);
        write_file(&key, &ca.default_leaf.key_pem, 0o600);
        let addr = free_addr();
        let admin = free_addr();
        let cfg = format!(
            "{upstream}\n[[listen]]\naddr = \"{addr}\"\nprotocol = \"https\"\ncert = \"{}\"\nkey = \"{}\"\n\n[admin]\naddr = \"{admin}\"\n\n{AUTH}",
            cert.display(),
            key.display()
        );
        Gw {
            pg: Proxyguard::start(&cfg),
            admin,
            cert,
            key,
            _dir: dir,
        }
    };
    let url = format!("{}/via-tiny", echo.url());
    let r = gw.curl(&stranger, &url, &[]);
    assert_eq!(r.status, 0, "{r:?}");
    assert_ne!(r.exit_code, 0, "{r:?}");
    let err = r.stderr.to_lowercase();
    assert!(
        err.contains("ssl") || err.contains("certificate"),
        "curl should fail on TLS: {r:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .metrics()
            .lines()
            .any(|l| l.starts_with("proxyguard_tls_handshake_failures_total")
                && !l.trim_end().ends_with(" 0"))),
        "no handshake failure counted:\n{}\n{}",
        gw.metrics(),
        gw.pg.logs()
    );
    assert!(
        gw.pg
            .json_logs()
            .iter()
            .any(|l| l["outcome"] == "tls_handshake_failed" && l["kind"] == "tls"),
        "{}",
        gw.pg.logs()
    );
    // With the right CA the same path works: through tinyproxy to the echo.
    let r = gw.curl(&ca, &url, &[]);
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.pg.logs());
    assert!(echo.requests() >= 1);
    // Nothing was held against the upstream.
    let m = gw.metrics();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("proxyguard_upstream_failures_total")
                && !l.trim_end().ends_with(" 0")),
        "{m}"
    );
}

#[test]
fn sighup_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
    let ca1 = TestCa::new();
    let ca2 = TestCa::with_name("second CA");
    let echo = EchoServer::start();
    let gw = start("https", &ca1.default_leaf, AUTH);
    let url = format!("{}/reload", echo.url());
    assert_eq!(gw.curl(&ca1, &url, &[]).status, 200, "{}", gw.pg.logs());

    // A broken certificate file: the reload fails, the old one stays.
    write_file(
        &gw.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
        0o644,
    );
    gw.pg.child.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .pg
            .logs()
            .contains("TLS certificate reload failed")),
        "{}",
        gw.pg.logs()
    );
    assert_eq!(gw.curl(&ca1, &url, &[]).status, 200, "{}", gw.pg.logs());

    // The second CA's leaf: after SIGHUP only the second CA is trusted.
    write_file(&gw.key, &ca2.default_leaf.key_pem, 0o600);
    write_file(&gw.cert, &ca2.default_leaf.cert_pem, 0o644);
    gw.pg.child.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(15), || gw.curl(&ca2, &url, &[]).status
            == 200),
        "second CA never accepted\n{}",
        gw.pg.logs()
    );
    let r = gw.curl(&ca1, &url, &[]);
    assert_eq!(r.status, 0, "the old CA still works: {r:?}");
    assert!(gw.metrics().contains("proxyguard_tls_reloads_total"));
}

#[test]
fn mixed_port_takes_tls_plain_http_and_socks5() {
    let ca = TestCa::new();
    let echo = EchoServer::start();
    let gw = start("mixed", &ca.default_leaf, "");
    let url = format!("{}/mixed", echo.url());
    // TLS: the ClientHello's first byte is 0x16.
    let proxy = gw.https_proxy();
    let ca_path = ca.ca_path();
    let r = curl(&[
        "--proxy",
        &proxy,
        "--proxy-cacert",
        ca_path.to_str().unwrap(),
        &url,
    ]);
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.pg.logs());
    // Plain HTTP on the same port.
    let r = curl(&["--proxy", &format!("http://{}", gw.pg.addr()), &url]);
    assert_eq!(r.status, 200, "{r:?}");
    // SOCKS5 on the same port.
    let r = curl(&["--proxy", &format!("socks5h://{}", gw.pg.addr()), &url]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.requests(), 3);
}

#[test]
fn non_loopback_listener_with_auth_but_no_tls_warns_at_start() {
    let port = free_port();
    let cfg = format!(
        "[[listen]]\naddr = \"0.0.0.0:{port}\"\nprotocol = \"http\"\n\n[admin]\nenabled = false\n\n{AUTH}"
    );
    let pg = Proxyguard::start(&cfg);
    assert!(
        wait_until(Duration::from_secs(10), || pg
            .logs()
            .contains("credentials travel in clear")),
        "{}",
        pg.logs()
    );
    assert!(!pg.logs().contains("s3cret-pw"));
}

/// A TLS client to the gateway trusting `ca`, offering h2 and http/1.1.
fn tls_to(
    addr: std::net::SocketAddr,
    ca: &TestCa,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn websocket_upgrade_inside_the_tls_listener_and_alpn_is_http11() {
    let ca = TestCa::new();
    let ws = WsEcho::start();
    let gw = start("https", &ca.default_leaf, "");
    let mut s = tls_to(gw.pg.addr(), &ca);
    let head = upgrade_on(&mut s, ws.addr(), "/over-tls");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}\n{}", gw.pg.logs());
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    send_frame(&mut s, 0x1, b"inside TLS");
    assert_eq!(read_frame(&mut s).unwrap(), (0x1, b"inside TLS".to_vec()));
    send_frame(&mut s, 0x8, &1000u16.to_be_bytes());
    assert_eq!(read_frame(&mut s).unwrap().0, 0x8);
}
