//! Self-test of the integration-test harness (`tests/support`): every peer
//! starts and really works, checked with curl and the Go client.

mod support;

use std::time::{Duration, SystemTime};
use support::*;

const LOG_WAIT: Duration = Duration::from_secs(3);

fn small_url(base: &str) -> String {
    format!("{base}/small")
}

#[test]
fn nginx_origin_http_https_and_access_log() {
    let nginx = Nginx::start_with(NginxOpts { big_bytes: 1 << 20 });
    let r = curl(&[&small_url(&nginx.url())]);
    assert_eq!(r.status, 200, "{r:?}\n{}", nginx.log());
    assert_eq!(r.body_len, SMALL_BYTES);

    let r = curl(&[&format!("{}/health", nginx.url())]);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{r:?}");

    let r = curl(&[&format!("{}/big", nginx.url())]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_len, 1 << 20);

    let ca = nginx.ca().ca_path();
    let r = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &small_url(&nginx.https_url()),
    ]);
    assert_eq!(r.status, 200, "{r:?}\n{}", nginx.log());
    assert_eq!(r.body_len, SMALL_BYTES);

    // Without the test CA the certificate is rejected (exit 60).
    let r = curl(&[&small_url(&nginx.https_url())]);
    assert_eq!(r.exit_code, 60, "{r:?}");

    let r = curl(&[&format!("{}/missing", nginx.url())]);
    assert_eq!(r.status, 404, "{r:?}");

    assert!(
        wait_until(LOG_WAIT, || nginx.requests() == 5),
        "nginx requests {} != 5 (the failed TLS handshake is not a request)\n{}",
        nginx.requests(),
        nginx.access_log()
    );
}

#[test]
fn tinyproxy_plain_connect_and_connect_ports() {
    let nginx = Nginx::start();
    let ca = nginx.ca().ca_path();
    let tiny = Tinyproxy::start(TinyOpts {
        connect_ports: None,
        logged: true,
    });
    let r = curl(&["-x", &tiny.url(), &small_url(&nginx.url())]);
    assert_eq!(r.status, 200, "{r:?}\n{}", tiny.log());
    assert_eq!(r.body_len, SMALL_BYTES);

    let r = curl(&[
        "-x",
        &tiny.url(),
        "--cacert",
        ca.to_str().unwrap(),
        &small_url(&nginx.https_url()),
    ]);
    assert_eq!(r.status, 200, "{r:?}\n{}", tiny.log());
    assert_eq!(r.connect_status, 200, "{r:?}");
    assert_eq!(r.body_len, SMALL_BYTES);

    assert!(
        wait_until(LOG_WAIT, || tiny.requests() == 2),
        "tinyproxy requests {} != 2\n{}",
        tiny.requests(),
        tiny.log()
    );
    assert!(
        wait_until(LOG_WAIT, || nginx.requests() == 2),
        "{}",
        nginx.access_log()
    );

    // ConnectPort 443 only: CONNECT to nginx's HTTPS port is refused.
    let strict = Tinyproxy::start(TinyOpts {
        connect_ports: Some(vec![443]),
        logged: false,
    });
    let r = curl(&[
        "-x",
        &strict.url(),
        "--cacert",
        ca.to_str().unwrap(),
        &small_url(&nginx.https_url()),
    ]);
    assert_eq!(r.connect_status, 403, "{r:?}\n{}", strict.log());
    assert_ne!(r.exit_code, 0);
    assert_eq!(strict.requests(), 0, "not logged: no count");
}

#[test]
fn squid_basic_auth_right_wrong_missing() {
    let echo = EchoServer::start();
    let nginx = Nginx::start();
    let squid = Squid::start_logged(Some(("alice", "s3cret")));
    assert_eq!(squid.url(), format!("http://alice:s3cret@{}", squid.addr()));

    let r = curl(&["-x", &squid.url(), &format!("{}/x", echo.url())]);
    assert_eq!(r.status, 200, "{r:?}\n{}", squid.log());
    // squid consumes Proxy-Authorization and adds Via.
    assert!(!r.body.contains("proxy-authorization"), "{}", r.body);
    assert!(r.body.contains("via: "), "{}", r.body);
    assert_eq!(echo.requests(), 1);

    let r = curl(&[
        "-x",
        &squid.url_no_auth(),
        "--proxy-user",
        "alice:wrong",
        &format!("{}/x", echo.url()),
    ]);
    assert_eq!(r.status, 407, "{r:?}");
    let r = curl(&["-x", &squid.url_no_auth(), &format!("{}/x", echo.url())]);
    assert_eq!(r.status, 407, "{r:?}");
    assert_eq!(
        echo.requests(),
        1,
        "denied requests must not reach the origin"
    );

    // CONNECT with credentials, and without (407 on the CONNECT).
    let ca = nginx.ca().ca_path();
    let https = small_url(&nginx.https_url());
    let r = curl(&["-x", &squid.url(), "--cacert", ca.to_str().unwrap(), &https]);
    assert_eq!(
        (r.connect_status, r.status),
        (200, 200),
        "{r:?}\n{}",
        squid.log()
    );
    assert_eq!(r.body_len, SMALL_BYTES);
    let r = curl(&[
        "-x",
        &squid.url_no_auth(),
        "--cacert",
        ca.to_str().unwrap(),
        &https,
    ]);
    assert_eq!(r.connect_status, 407, "{r:?}");
    assert_ne!(r.exit_code, 0);

    assert!(
        wait_until(LOG_WAIT, || squid.requests() == 5),
        "squid access log lines {} != 5:\n{}",
        squid.requests(),
        squid.access_log()
    );
}

#[test]
fn squid_without_auth_and_unlogged() {
    let echo = EchoServer::start();
    let squid = Squid::start(None);
    let r = curl(&["-x", &squid.url(), &format!("{}/plain", echo.url())]);
    assert_eq!(r.status, 200, "{r:?}\n{}", squid.log());
    assert!(r.body.starts_with("GET /plain HTTP/1.1\n"), "{}", r.body);
    assert_eq!(squid.requests(), 0, "access_log none");
}

fn socks_checks(
    url_noauth: &str,
    auth: Option<(&str, &str)>,
    what: &str,
    log: &dyn Fn() -> String,
) {
    let echo = EchoServer::start();
    let nginx_like = format!("{}/s", echo.url());
    let proxy = url_noauth.trim_start_matches("socks5://").to_string();
    let mut ok_args = vec!["--socks5", proxy.as_str()];
    let cred;
    if let Some((u, p)) = auth {
        cred = format!("{u}:{p}");
        ok_args.extend(["--proxy-user", cred.as_str()]);
    }
    let mut a = ok_args.clone();
    a.push(&nginx_like);
    let r = curl(&a);
    assert_eq!(r.status, 200, "{what}: {r:?}\n{}", log());
    assert!(r.body.starts_with("GET /s HTTP/1.1\n"), "{}", r.body);

    // Remote name resolution (socks5h): the proxy resolves "localhost".
    let by_name = format!("http://localhost:{}/h", echo.port());
    let mut a = ok_args.clone();
    a[0] = "--socks5-hostname";
    a.push(&by_name);
    let r = curl(&a);
    assert_eq!(r.status, 200, "{what} socks5-hostname: {r:?}\n{}", log());
    assert_eq!(echo.requests(), 2);

    if auth.is_some() {
        let r = curl(&[
            "--socks5",
            &proxy,
            "--proxy-user",
            "nobody-here:bad",
            &nginx_like,
        ]);
        assert_eq!(r.status, 0, "{what} wrong creds: {r:?}");
        assert_ne!(r.exit_code, 0, "{what} wrong creds: {r:?}");
        let r = curl(&["--socks5", &proxy, &nginx_like]);
        assert_ne!(r.exit_code, 0, "{what} no creds: {r:?}");
        assert_eq!(
            echo.requests(),
            2,
            "{what}: rejected clients reached the origin"
        );
    }
}

#[test]
fn dante_without_and_with_auth() {
    let open = Dante::start(None);
    assert!(open.url().starts_with("socks5://127.0.0.1:"));
    socks_checks(&open.url(), None, "dante", &|| open.log());
    assert!(
        wait_until(LOG_WAIT, || open.requests() == 2),
        "dante connects {}\n{}",
        open.requests(),
        open.log()
    );

    let authed = Dante::start(Some(("pgtest", "pgtest-pass")));
    assert_eq!(
        authed.url(),
        format!("socks5://pgtest:pgtest-pass@{}", authed.addr())
    );
    let noauth = format!("socks5://{}", authed.addr());
    socks_checks(
        &noauth,
        Some(("pgtest", "pgtest-pass")),
        "dante auth",
        &|| authed.log(),
    );
}

#[test]
fn microsocks_without_and_with_auth() {
    let open = Microsocks::start(None);
    socks_checks(&open.url(), None, "microsocks", &|| open.log());
    let authed = Microsocks::start(Some(("bob", "pw1")));
    assert_eq!(authed.url(), format!("socks5://bob:pw1@{}", authed.addr()));
    let noauth = format!("socks5://{}", authed.addr());
    socks_checks(&noauth, Some(("bob", "pw1")), "microsocks auth", &|| {
        authed.log()
    });
}

#[test]
fn echo_server_reflects_request() {
    let echo = EchoServer::start();
    let r = curl(&[
        "-H",
        "X-Test: 1",
        "-H",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        &format!("{}/foo?q=1", echo.url()),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("GET /foo?q=1 HTTP/1.1\n"), "{}", r.body);
    assert!(r.body.contains("\nx-test: 1\n"), "{}", r.body);
    assert!(
        r.body
            .contains("\nproxy-authorization: Basic Zm9vOmJhcg==\n"),
        "{}",
        r.body
    );
    assert!(r
        .body
        .contains(&format!("\nhost: 127.0.0.1:{}\n", echo.port())));

    let r = curl(&[&format!("{}/status/418", echo.url())]);
    assert_eq!(r.status, 418, "{r:?}");
    let r = curl(&[&format!("{}/status/204", echo.url())]);
    assert_eq!((r.status, r.body_len), (204, 0), "{r:?}");
    let r = curl(&["-d", "hello", &format!("{}/post", echo.url())]);
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("POST /post HTTP/1.1\n"), "{}", r.body);
    assert!(r.body.contains("\nbody-length: 5\n"), "{}", r.body);
    let r = curl(&[&format!("{}/bytes/1000", echo.url())]);
    assert_eq!(r.body_len, 1000);
    let r = curl(&["--max-time", "1", &format!("{}/delay/3000", echo.url())]);
    assert_eq!(r.exit_code, 28, "timeout expected: {r:?}");
    // Requests are counted (and recorded) on receipt, before any delay.
    assert_eq!(echo.requests(), 6);
    assert!(echo.last_request().unwrap().contains("/delay/3000"));
    assert!(echo.connections() >= 6);
}

#[test]
fn echo_tls_and_test_ca_leaf_variants() {
    let ca = TestCa::new();
    let cafile = ca.ca_path();
    let cafile = cafile.to_str().unwrap();
    let echo = EchoServer::tls(&ca);
    assert!(echo.url().starts_with("https://127.0.0.1:"));
    let r = curl(&["--cacert", cafile, &format!("{}/tls", echo.url())]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("GET /tls HTTP/1.1\n"), "{}", r.body);
    // Name in the leaf: localhost (and ::1, origin.test).
    let r = curl(&[
        "--cacert",
        cafile,
        &format!("https://localhost:{}/", echo.port()),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&[
        "--cacert",
        cafile,
        "--resolve",
        &format!("origin.test:{}:127.0.0.1", echo.port()),
        &format!("https://origin.test:{}/", echo.port()),
    ]);
    assert_eq!(r.status, 200, "{r:?}");

    let expired = EchoServer::tls_leaf(&ca.expired_leaf());
    let r = curl(&["--cacert", cafile, &expired.url()]);
    assert_eq!(
        r.exit_code, 60,
        "expired leaf must fail verification: {r:?}"
    );
    assert!(r.stderr.contains("expired"), "{}", r.stderr);

    let wrong = EchoServer::tls_leaf(&ca.wrong_name_leaf());
    let r = curl(&["--cacert", cafile, &wrong.url()]);
    assert_eq!(
        r.exit_code, 60,
        "wrong-name leaf must fail verification: {r:?}"
    );
    let r = curl(&[
        "--cacert",
        cafile,
        "--resolve",
        &format!("wrong.test:{}:127.0.0.1", wrong.port()),
        &format!("https://wrong.test:{}/", wrong.port()),
    ]);
    assert_eq!(r.status, 200, "right name works: {r:?}");
    assert_eq!(wrong.requests(), 1);

    // Custom validity window + files on disk.
    let now = SystemTime::now();
    let leaf = ca.leaf(&["a.test"], now, now + Duration::from_secs(3600));
    assert!(leaf.cert_path.exists() && leaf.key_path.exists());
    assert!(std::fs::read_to_string(ca.ca_path())
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert!(ca.cert_path().ends_with("cert.pem") && ca.key_path().ends_with("key.pem"));
}

#[test]
fn go_client_direct_and_via_env_proxy() {
    let nginx = Nginx::start();
    let res = GoClient::run(&GoOpts::new(&small_url(&nginx.url())).n(20).c(4));
    assert_eq!((res.ok, res.failed), (20, 0), "{res:?}");
    assert_eq!(res.status(200), 20, "{res:?}");
    assert_eq!(res.first_body.len(), SMALL_BYTES);
    assert!(res.max_ms >= res.p99_ms && res.p99_ms >= res.p50_ms);

    let res = GoClient::run(
        &GoOpts::new(&small_url(&nginx.https_url()))
            .n(3)
            .cafile(nginx.ca().ca_path()),
    );
    assert_eq!(res.status(200), 3, "{res:?}");
    // Without the CA: TLS errors, counted as failures.
    let res = GoClient::run(&GoOpts::new(&small_url(&nginx.https_url())).n(2));
    assert_eq!(res.failed, 2, "{res:?}");
    assert!(
        res.errors.keys().any(|e| e.contains("certificate")),
        "{res:?}"
    );

    // HTTP_PROXY from the env is honoured for a non-loopback name: the
    // echo server plays the proxy and sees the absolute-form request.
    let echo = EchoServer::start();
    let res = GoClient::run(&GoOpts::new("http://origin.test:8080/via-env").proxy(&echo.url()));
    assert_eq!(res.status(200), 1, "{res:?}");
    assert!(
        res.first_body
            .starts_with("GET http://origin.test:8080/via-env HTTP/1.1\n"),
        "{}",
        res.first_body
    );
    assert_eq!(echo.requests(), 1);
    assert!(
        wait_until(LOG_WAIT, || nginx.requests() == 23),
        "{}",
        nginx.access_log()
    );
}

#[test]
fn harness_utilities() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
    let addr = free_addr();
    assert!(!wait_port(addr, Duration::from_millis(100)));
    let l = std::net::TcpListener::bind(addr).unwrap();
    assert!(wait_port(addr, Duration::from_secs(1)));
    drop(l);

    let cfg =
        "[[listen]]\naddr = \"127.0.0.1:18080\"\n[[listen]]\naddr = \"socks5://127.0.0.1:11080\"\n";
    let addrs = listen_addrs(cfg);
    assert_eq!(
        addrs,
        vec![
            "127.0.0.1:18080".parse().unwrap(),
            "127.0.0.1:11080".parse().unwrap()
        ]
    );

    // Child guard: logs captured, killed and reaped on drop.
    let dir = temp_dir("child", false);
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "echo started; echo oops >&2; sleep 30"]);
    let mut child = Child::spawn("sleeper", cmd, dir.path());
    let pid = child.pid();
    assert!(wait_until(Duration::from_secs(5), || child
        .log()
        .contains("oops")));
    assert!(child.log().contains("started"), "{}", child.log());
    assert!(child.alive());
    let t = std::time::Instant::now();
    drop(child);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "child not reaped"
    );

    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30");
    let mut child = Child::spawn("sleeper9", cmd, dir.path());
    child.kill9();
    assert!(!child.alive());

    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30");
    let out = run_cmd(cmd, Duration::from_millis(200));
    assert!(out.timed_out);
}
