//! The commonest configuration mistakes, each against the real peer that
//! shows it: a SOCKS or TLS URL for an HTTP proxy port, tinyproxy's 401 for
//! credentials, an `openssl req -x509` certificate, an https:// URL for a
//! plain port, curl-like URLs, `--cacert` naming the root that verified.

mod support;

use support::doctor_peers::*;
use support::*;

fn failed_step_ms(d: &Doc, name: &str) -> f64 {
    d.json["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name && s["ok"] == false))
        .and_then(|s| s["duration_ms"].as_f64())
        .unwrap_or_else(|| panic!("no failed step {name}: {}", d.json))
}

/// The phase timeout is 30 s: a mismatch must be named without waiting for it.
#[test]
fn wrong_scheme_for_an_http_proxy_port_names_the_right_one() {
    let nginx = Nginx::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let https = format!("{}/small", nginx.https_url());
    // tinyproxy never answers a SOCKS5 greeting (it waits for a line).
    let d = doctor(&[
        "--timeout",
        "30s",
        "--proxy",
        &format!("socks5://{}", tiny.addr()),
        &https,
    ]);
    expect_cause(&d, "proxy_protocol_mismatch");
    let why = d.json["summary"].as_str().unwrap();
    assert!(why.contains("this port speaks HTTP: use http://"), "{why}");
    assert!(d.json["fix"]
        .as_str()
        .unwrap()
        .contains(&format!("http://{}", tiny.addr())));
    assert!(
        failed_step_ms(&d, "proxy_handshake") < 20_000.0,
        "{}",
        d.json
    );
    // …nor a TLS ClientHello: https:// for a plain HTTP proxy.
    let d = doctor(&[
        "--timeout",
        "30s",
        "--proxy",
        &format!("https://{}", tiny.addr()),
        &https,
    ]);
    expect_cause(&d, "proxy_protocol_mismatch");
    assert!(
        d.json["summary"].as_str().unwrap().contains("use http://"),
        "{}",
        d.json
    );
    assert!(failed_step_ms(&d, "proxy_tls") < 20_000.0, "{}", d.json);
    assert!(
        step_detail(&d, "tcp").contains("connected"),
        "TCP connected: {}",
        d.json
    );
    // http:// for a SOCKS5 port (microsocks).
    let ms = Microsocks::start(None);
    let d = doctor(&[
        "--timeout",
        "2s",
        "--proxy",
        &format!("http://{}", ms.addr()),
        &https,
    ]);
    expect_cause(&d, "proxy_protocol_mismatch");
    assert!(
        d.json["summary"]
            .as_str()
            .unwrap()
            .contains("use socks5h://"),
        "{}",
        d.json
    );
}

#[test]
fn tinyproxy_basic_auth_401_is_proxy_auth() {
    let nginx = Nginx::start();
    let tiny = TinyproxyWith::start("BasicAuth doc s3cret");
    let https = format!("{}/small", nginx.https_url());
    let small = format!("{}/small", nginx.url());
    let ca = nginx.ca().ca_path();
    let ca = ca.to_str().unwrap();
    let none = format!("http://{}", tiny.addr());
    let wrong = format!("http://doc:wrong@{}", tiny.addr());
    let right = format!("http://doc:s3cret@{}", tiny.addr());
    for url in [&https, &small] {
        let d = doctor(&["--timeout", "5s", "--cacert", ca, "--proxy", &none, url]);
        expect_cause(&d, "proxy_auth_required");
        let d = doctor(&["--timeout", "5s", "--cacert", ca, "--proxy", &wrong, url]);
        expect_cause(&d, "proxy_auth_rejected");
        // tinyproxy 1.11 answers wrong credentials with 401 + WWW-Authenticate.
        assert!(
            d.json["summary"].as_str().unwrap().contains("401"),
            "{}",
            d.json
        );
        assert!(
            !d.human.contains("wrong") && !d.json.to_string().contains("wrong"),
            "secret shown"
        );
        let d = doctor(&["--timeout", "5s", "--cacert", ca, "--proxy", &right, url]);
        assert_eq!(d.code, 0, "{}", d.human);
    }
}

#[test]
fn openssl_self_signed_ca_certificate_is_untrusted_in_words() {
    let srv = SelfSignedNginx::start();
    let d = doctor(&["--timeout", "5s", &srv.url()]);
    expect_cause(&d, "tls_cert_untrusted");
    let why = d.json["summary"].as_str().unwrap();
    assert!(why.contains("CA certificate"), "{why}");
    assert!(
        !why.contains("TLS handshake") && !why.contains("not TLS"),
        "{why}"
    );
    assert!(!d.json["fix"].as_str().unwrap().contains("not TLS at all"));
    assert_eq!(d.json["certificate"]["is_ca"], true, "{}", d.json);
    // Trusted with --cacert it is still refused by webpki, and said so.
    let cert = srv.cert_path();
    let d = doctor(&[
        "--timeout",
        "5s",
        "--cacert",
        cert.to_str().unwrap(),
        &srv.url(),
    ]);
    expect_cause(&d, "tls_cert_untrusted");
    assert!(d.json["summary"]
        .as_str()
        .unwrap()
        .contains("even when it is trusted"));
}

#[test]
fn cacert_report_names_the_root_that_verified() {
    let nginx = Nginx::start();
    let ca = nginx.ca().ca_path();
    let d = doctor(&[
        "--timeout",
        "5s",
        "--cacert",
        ca.to_str().unwrap(),
        &format!("{}/small", nginx.https_url()),
    ]);
    assert_eq!(d.code, 0, "{}", d.human);
    let tls = step_detail(&d, "tls");
    assert!(
        tls.contains(&format!("verified against --cacert {}", ca.display())),
        "{tls}"
    );
    assert!(tls.contains("(root \""), "names the root: {tls}");
    assert!(!tls.contains("platform roots"), "{tls}");
}

#[test]
fn https_url_for_a_plain_http_port_is_found_at_once() {
    let nginx = Nginx::start();
    // A long phase timeout: the answer must not wait for it.
    let d = doctor(&[
        "--timeout",
        "30s",
        &format!("https://{}/small", nginx.addr()),
    ]);
    expect_cause(&d, "tls_protocol_mismatch");
    assert!(
        d.json["summary"].as_str().unwrap().contains("speaks HTTP"),
        "{}",
        d.json
    );
    assert!(d.json["fix"]
        .as_str()
        .unwrap()
        .contains(&format!("http://{}", nginx.addr())));
    let tls_ms = d.json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tls")
        .unwrap()["duration_ms"]
        .as_f64()
        .unwrap();
    assert!(tls_ms < 20_000.0, "waited for the timeout: {tls_ms} ms");
}

#[test]
fn urls_taken_like_curl_and_usage_errors_exit_2() {
    let nginx = Nginx::start();
    let d = doctor(&["--timeout", "5s", &format!("{}/small", nginx.addr())]);
    assert_eq!(d.code, 0, "{}", d.human);
    assert_eq!(d.json["url"], format!("http://{}/small", nginx.addr()));
    let d = doctor(&[
        "--timeout",
        "5s",
        &format!("localhost:{}/small", nginx.port()),
    ]);
    assert_eq!(d.code, 0, "{}", d.human);
    for bad in ["ftp://127.0.0.1/x", "http://", "http://bad host/"] {
        let out = proxyguard_run(&["doctor", bad], &[], std::time::Duration::from_secs(30));
        assert_eq!(out.code, 2, "{bad}: {out:?}");
        assert!(out.stderr.contains("bad URL"), "{out:?}");
    }
    let out = proxyguard_run(
        &["doctor", "--timeout", "soon", "x"],
        &[],
        std::time::Duration::from_secs(30),
    );
    assert_eq!(out.code, 2, "{out:?}");
    for args in [
        &["doctor", "--repeat", "2"][..],
        &["doctor", "--hold", "5s"][..],
        &["doctor", "--repeat", "0", "x"][..],
        &["doctor", "--hold", "2s", "--repeat", "2", "x"][..],
    ] {
        let out = proxyguard_run(args, &[], std::time::Duration::from_secs(30));
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
    }
}

#[test]
fn https_proxy_needs_its_ca_and_proxy_cacert_adds_it() {
    let nginx = Nginx::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let proxy_ca = TestCa::new();
    let tls_proxy = TlsProxy::start(tiny.addr(), &proxy_ca);
    let proxy = format!("https://{}", tls_proxy.addr);
    let small = format!("{}/small", nginx.url());
    let d = doctor(&["--timeout", "5s", "--proxy", &proxy, &small]);
    expect_cause(&d, "tls_cert_untrusted");
    assert!(
        d.json["summary"]
            .as_str()
            .unwrap()
            .contains("https:// proxy"),
        "{}",
        d.json
    );
    assert!(
        d.json["fix"].as_str().unwrap().contains("--proxy-cacert"),
        "{}",
        d.json
    );
    let pca = proxy_ca.ca_path();
    let d = doctor(&[
        "--timeout",
        "5s",
        "--proxy",
        &proxy,
        "--proxy-cacert",
        pca.to_str().unwrap(),
        &small,
    ]);
    assert_eq!(d.code, 0, "{}", d.human);
    assert!(
        step_detail(&d, "proxy_tls").contains("--proxy-cacert"),
        "{}",
        d.human
    );
    // The target's roots are separate: --cacert does not vouch for the proxy.
    let d = doctor(&[
        "--timeout",
        "5s",
        "--proxy",
        &proxy,
        "--cacert",
        pca.to_str().unwrap(),
        &small,
    ]);
    expect_cause(&d, "tls_cert_untrusted");
}

/// The same mistake in `serve`: an `https://` upstream whose port speaks
/// plain HTTP. tinyproxy waits for a line the ClientHello never completes,
/// so only a timeout can find it — the client's 504 says what it means.
#[test]
fn serve_names_an_https_upstream_on_a_plain_http_port() {
    let tiny = Tinyproxy::start(TinyOpts::default());
    let listen = free_addr();
    let pg = Proxyguard::start(&format!(
        "bypass_loopback = false\n[[listen]]\naddr = \"{listen}\"\n\n\
         [[upstream]]\nname = \"tp\"\nurl = \"https://{}\"\n\n\
         [timeouts]\ntls = \"1s\"\n[pool]\nconnect_deadline = \"10s\"\n",
        tiny.addr()
    ));
    let r = curl(&[
        "-s",
        "-i",
        "-x",
        &format!("http://{listen}"),
        "http://127.0.0.1:9/",
    ]);
    assert_eq!(r.status, 504, "{}\n{}", r.body, pg.logs());
    let head = r.body.to_ascii_lowercase();
    assert!(
        head.contains("proxy_tls timed out") && head.contains("use http://"),
        "{}",
        r.body
    );
}
