//! `proxyguard doctor` against real peers: at least one scenario per cause
//! code, each asserting the exact code in `--json` and that the human report
//! names the same cause; plus happy paths through tinyproxy, squid with auth,
//! dante and direct.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::netns::Netns;
use support::*;

struct Doc {
    code: i32,
    json: serde_json::Value,
    human: String,
}

fn doctor(args: &[&str]) -> Doc {
    let mut a = vec!["doctor", "--timeout", "2s"];
    a.extend_from_slice(args);
    let mut j = a.clone();
    j.push("--json");
    let out = proxyguard_run(&j, &[("NO_COLOR", "1")], Duration::from_secs(30));
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json output is not JSON ({e}): {out:?}"));
    let h = proxyguard_run(&a, &[("NO_COLOR", "1")], Duration::from_secs(30));
    assert_eq!(h.code, out.code, "human and JSON exit codes differ");
    Doc {
        code: out.code,
        json,
        human: h.stdout,
    }
}

/// Asserts the diagnosed cause in both renderings.
fn expect(d: &Doc, cause: &str) {
    assert_eq!(
        d.json["cause"],
        cause,
        "{}",
        serde_json::to_string_pretty(&d.json).unwrap()
    );
    assert_eq!(d.code, 1, "a diagnosed cause exits 1");
    assert_eq!(d.json["ok"], false);
    assert!(
        d.human.contains(&format!("cause: {cause}")),
        "human report:\n{}",
        d.human
    );
    assert!(!d.json["fix"].as_str().unwrap_or("").is_empty());
    let steps = d.json["steps"].as_array().expect("steps");
    assert!(steps.iter().all(|s| s["name"].is_string()
        && s["ok"].is_boolean()
        && s["duration_ms"].is_number()
        && s["detail"].is_string()));
    assert!(
        steps.iter().any(|s| s["ok"] == false),
        "a failed step is shown"
    );
}

fn expect_ok(d: &Doc) {
    assert_eq!(
        d.code,
        0,
        "{}\n{}",
        serde_json::to_string_pretty(&d.json).unwrap(),
        d.human
    );
    assert_eq!(d.json["ok"], true);
    assert!(d.json["cause"].is_null());
    assert!(d.human.contains("ok:"), "{}", d.human);
}

fn closed_port() -> SocketAddr {
    free_addr()
}

/// Runs iptables; the rule is deleted on drop.
struct Rule(Vec<String>);
impl Rule {
    fn add(args: &[&str]) -> Rule {
        let mut a = vec!["-I".to_string()];
        a.extend(args.iter().map(|s| s.to_string()));
        let out = Command::new("iptables")
            .args(&a)
            .output()
            .expect("iptables");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Rule(args.iter().map(|s| s.to_string()).collect())
    }

    /// SYNs to loopback port `port` silently dropped: a connect times out.
    fn drop_syn(port: u16) -> Rule {
        let port = port.to_string();
        Rule::add(&[
            "INPUT", "-i", "lo", "-p", "tcp", "--dport", &port, "--syn", "-j", "DROP",
        ])
    }
}
impl Drop for Rule {
    fn drop(&mut self) {
        let mut a = vec!["-D".to_string()];
        a.extend(self.0.iter().cloned());
        let _ = Command::new("iptables").args(&a).output();
    }
}

/// A server that answers every request head with a fixed reply, or resets.
struct Fake {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}
impl Fake {
    fn start(reply: Option<&'static str>) -> Fake {
        use std::io::{Read, Write};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        match reply {
                            None => {
                                // Reset: SO_LINGER 0 then close.
                                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                                drop(s);
                            }
                            Some(r) => {
                                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                                let mut buf = [0u8; 4096];
                                let _ = s.read(&mut buf);
                                let _ = s.write_all(r.as_bytes());
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Fake { addr, stop }
    }
}
impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn happy_paths_direct_tinyproxy_squid_auth_dante() {
    let nginx = Nginx::start();
    let ca = nginx.ca().ca_path();
    let ca = ca.to_str().unwrap();
    let small = format!("{}/small", nginx.url());
    let https = format!("{}/small", nginx.https_url());
    let d = doctor(&[&small]);
    expect_ok(&d);
    assert_eq!(d.json["proxy"], serde_json::Value::Null);
    for k in ["namelookup", "connect", "starttransfer", "total"] {
        assert!(d.json["timings"][k].is_number(), "timing {k}: {}", d.json);
    }
    let tiny = Tinyproxy::start(TinyOpts::default());
    expect_ok(&doctor(&["--proxy", &tiny.url(), &small]));
    let d = doctor(&["--proxy", &tiny.url(), "--cacert", ca, &https]);
    expect_ok(&d);
    assert!(
        d.json["timings"]["proxy_handshake"].is_number()
            && d.json["timings"]["appconnect"].is_number()
    );
    assert!(
        d.human.contains("TLSv1_3") || d.human.contains("TLSv1_2"),
        "{}",
        d.human
    );
    let squid = Squid::start(Some(("doc", "pa ss")));
    let url = format!("http://doc:pa%20ss@{}", squid.addr());
    let d = doctor(&["--proxy", &url, "--cacert", ca, &https]);
    expect_ok(&d);
    assert!(
        !d.human.contains("pa ss") && !d.human.contains("pa%20ss"),
        "secret in report"
    );
    let dante = Dante::start(None);
    expect_ok(&doctor(&["--proxy", &dante.url(), "--cacert", ca, &https]));
    // --compare-direct shows both paths.
    let d = doctor(&["--proxy", &tiny.url(), "--compare-direct", &small]);
    expect_ok(&d);
    assert_eq!(d.json["direct"]["ok"], true);
    assert!(d.human.contains("compare: direct"));
}

#[test]
fn proxy_connection_causes() {
    let nginx = Nginx::start();
    let small = format!("{}/small", nginx.url());
    // Refused.
    expect(
        &doctor(&["--proxy", &format!("http://{}", closed_port()), &small]),
        "proxy_refused",
    );
    // Timeout: SYNs silently dropped.
    let p = free_port();
    let _l = TcpListener::bind(("127.0.0.1", p)).unwrap();
    {
        let _r = Rule::drop_syn(p);
        let d = doctor(&["--proxy", &format!("http://127.0.0.1:{p}"), &small]);
        expect(&d, "proxy_timeout");
        assert!(d.human.contains("silently dropped"), "{}", d.human);
    }
    // Unreachable: an ICMP host-unreachable answer.
    let q = free_port();
    {
        let _r = Rule::add(&[
            "INPUT",
            "-i",
            "lo",
            "-p",
            "tcp",
            "--dport",
            &q.to_string(),
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-host-unreachable",
        ]);
        expect(
            &doctor(&["--proxy", &format!("http://127.0.0.1:{q}"), &small]),
            "proxy_unreachable",
        );
    }
    // Reset during the handshake.
    let rst = Fake::start(None);
    expect(
        &doctor(&[
            "--proxy",
            &format!("http://{}", rst.addr),
            &format!("{}/small", nginx.https_url()),
        ]),
        "proxy_reset",
    );
    // SOCKS5 spoken to an HTTP port.
    let echo = EchoServer::start();
    let d = doctor(&["--proxy", &format!("socks5h://{}", echo.addr()), &small]);
    expect(&d, "proxy_protocol_mismatch");
    assert!(
        d.json["steps"].to_string().contains("speaks HTTP"),
        "{}",
        d.json
    );
}

#[test]
fn proxy_policy_and_auth_causes() {
    let nginx = Nginx::start();
    let https = format!("{}/small", nginx.https_url());
    let small = format!("{}/small", nginx.url());
    let squid = Squid::start(Some(("doc", "right")));
    let d = doctor(&["--proxy", &squid.url_no_auth(), &https]);
    expect(&d, "proxy_auth_required");
    assert!(
        d.json["summary"].as_str().unwrap().contains("Basic"),
        "{}",
        d.json
    );
    let bad = format!("http://doc:wrong@{}", squid.addr());
    expect(&doctor(&["--proxy", &bad, &https]), "proxy_auth_rejected");
    // Plain HTTP through the proxy (absolute-form) gets the same diagnosis.
    expect(
        &doctor(&["--proxy", &squid.url_no_auth(), &small]),
        "proxy_auth_required",
    );
    // NTLM: Windows domain auth, said so.
    let ntlm = Fake::start(Some("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n"));
    let d = doctor(&["--proxy", &format!("http://{}", ntlm.addr), &https]);
    expect(&d, "proxy_auth_required");
    assert!(
        d.json["summary"]
            .as_str()
            .unwrap()
            .contains("Windows domain"),
        "{}",
        d.json
    );
    // 403 for a port the proxy does not allow.
    let tiny = Tinyproxy::start(TinyOpts {
        connect_ports: Some(vec![443]),
        logged: false,
    });
    expect(
        &doctor(&["--proxy", &tiny.url(), &https]),
        "proxy_forbidden",
    );
    // The proxy cannot reach the target.
    let open = Tinyproxy::start(TinyOpts::default());
    expect(
        &doctor(&[
            "--proxy",
            &open.url(),
            &format!("https://{}/", closed_port()),
        ]),
        "proxy_upstream_error",
    );
    // Through SOCKS5 the target refusal is told apart.
    let ms = Microsocks::start(None);
    expect(
        &doctor(&["--proxy", &ms.url(), &format!("https://{}/", closed_port())]),
        "target_refused",
    );
}

#[test]
fn target_and_http_causes() {
    let nginx = Nginx::start();
    expect(
        &doctor(&[&format!("http://{}/", closed_port())]),
        "target_refused",
    );
    let p = free_port();
    let _l = TcpListener::bind(("127.0.0.1", p)).unwrap();
    {
        let _r = Rule::drop_syn(p);
        expect(
            &doctor(&[&format!("http://127.0.0.1:{p}/")]),
            "target_timeout",
        );
    }
    let d = doctor(&[&format!("{}/missing", nginx.url())]);
    expect(&d, "http_error");
    assert!(d.json["summary"].as_str().unwrap().contains("404"));
}

#[test]
fn tls_causes() {
    let ca = TestCa::new();
    let ca_path = ca.ca_path();
    let ca_s = ca_path.to_str().unwrap();
    // Untrusted issuer.
    let good = EchoServer::tls(&ca);
    expect(
        &doctor(&[&format!("https://127.0.0.1:{}/", good.port())]),
        "tls_cert_untrusted",
    );
    // …and trusted with the CA: ok.
    expect_ok(&doctor(&[
        "--cacert",
        ca_s,
        &format!("https://127.0.0.1:{}/", good.port()),
    ]));
    // Expired.
    let expired = EchoServer::tls_leaf(&ca.expired_leaf());
    let d = doctor(&[
        "--cacert",
        ca_s,
        &format!("https://127.0.0.1:{}/", expired.port()),
    ]);
    expect(&d, "tls_cert_expired");
    assert!(
        d.json["certificate"]["expires_in_s"].as_i64().unwrap() < 0,
        "{}",
        d.json
    );
    // Wrong name.
    let wrong = EchoServer::tls_leaf(&ca.wrong_name_leaf());
    let d = doctor(&[
        "--cacert",
        ca_s,
        &format!("https://127.0.0.1:{}/", wrong.port()),
    ]);
    expect(&d, "tls_hostname_mismatch");
    assert!(
        d.json["summary"].as_str().unwrap().contains("wrong.test"),
        "{}",
        d.json
    );
    // Not TLS at all on this port.
    let plain = EchoServer::start();
    expect(
        &doctor(&[&format!("https://127.0.0.1:{}/", plain.port())]),
        "tls_protocol_mismatch",
    );
    // A TLS-inspecting proxy's CA (through a real proxy).
    let mitm = TestCa::with_name("mitmproxy");
    let intercepted = EchoServer::tls(&mitm);
    let tiny = Tinyproxy::start(TinyOpts::default());
    let d = doctor(&[
        "--proxy",
        &tiny.url(),
        &format!("https://127.0.0.1:{}/", intercepted.port()),
    ]);
    expect(&d, "tls_intercepted");
    assert!(
        d.json["summary"].as_str().unwrap().contains("mitmproxy"),
        "{}",
        d.json
    );
}

/// `doctor` run inside a network namespace with only `lo`, whose
/// resolv.conf points at 127.0.0.1 inside it (see `support::netns`): DNS
/// fails fast and nothing leaves the namespace.
fn ns_doctor(ns: &Netns, args: &[&str]) -> Doc {
    let run = |json: bool| {
        let mut c = ns.command(proxyguard_bin());
        c.args(["doctor", "--timeout", "3s"]);
        c.args(args);
        if json {
            c.arg("--json");
        }
        c.env("NO_COLOR", "1");
        run_cmd(c, Duration::from_secs(30))
    };
    let j = run(true);
    let h = run(false);
    Doc {
        code: j.code,
        json: serde_json::from_str(&j.stdout).unwrap_or_else(|e| panic!("{e}: {j:?}")),
        human: h.stdout,
    }
}

#[test]
fn dns_and_unreachable_causes_in_an_isolated_namespace() {
    let ns = Netns::new();
    expect(
        &ns_doctor(
            &ns,
            &[
                "--proxy",
                "http://no-such-proxy.invalid:3128",
                "http://example.invalid/",
            ],
        ),
        "proxy_dns_failure",
    );
    expect(
        &ns_doctor(&ns, &["http://no-such-target.invalid/"]),
        "target_dns_failure",
    );
    // Only `lo` exists in this test's own namespace: any other address has
    // no route, so connect fails with ENETUNREACH and no packet is sent.
    expect(
        &ns_doctor(
            &ns,
            &[
                "--proxy",
                "http://10.255.255.1:3128",
                "http://example.invalid/",
            ],
        ),
        "proxy_unreachable",
    );
}

#[test]
fn every_cause_code_is_documented() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/doctor.md")).unwrap();
    for c in proxyguard::doctor::Cause::ALL {
        assert!(
            doc.contains(&format!("`{}`", c.code())),
            "{} missing from docs/doctor.md",
            c.code()
        );
    }
}

#[test]
fn config_without_url_checks_every_upstream() {
    let nginx = Nginx::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let dead = closed_port();
    let dir = temp_dir("doccfg", false);
    let p = dir.path().join("pg.toml");
    std::fs::write(
        &p,
        format!(
            "[[upstream]]\nname = \"good\"\nurl = \"{}\"\n\n[[upstream]]\nname = \"dead\"\nurl = \"http://{dead}\"\n\n[health]\nurl = \"{}/health\"\n",
            tiny.url(),
            nginx.url()
        ),
    )
    .unwrap();
    let out = proxyguard_run(
        &["doctor", "--timeout", "2s", "--config", p.to_str().unwrap()],
        &[("NO_COLOR", "1")],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 1, "one upstream is dead: {out:?}");
    let good = out
        .stdout
        .lines()
        .find(|l| l.starts_with("good"))
        .expect("row for good");
    let bad = out
        .stdout
        .lines()
        .find(|l| l.starts_with("dead"))
        .expect("row for dead");
    assert!(
        good.trim_end().ends_with("ok") && good.contains("http✓"),
        "{good}"
    );
    assert!(
        bad.trim_end().ends_with("proxy_refused") && bad.contains("tcp✗"),
        "{bad}"
    );
}

#[test]
fn gateway_signature_and_timestamp_causes() {
    let bad_sig = Fake::start(Some("HTTP/1.1 400 Bad Request\r\nX-Ca-Error-Message: Invalid Signature, Server StringToSign:`GET#application/json###/demo`\r\nContent-Length: 0\r\n\r\n"));
    let d = doctor(&[&format!("http://{}/demo", bad_sig.addr)]);
    expect(&d, "signature_mismatch");
    assert!(
        d.json["summary"]
            .as_str()
            .unwrap()
            .contains("GET#application/json"),
        "{}",
        d.json
    );
    let expired = Fake::start(Some("HTTP/1.1 400 Bad Request\r\nX-Ca-Error-Message: Timestamp Expired\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n"));
    let d = doctor(&[&format!("http://{}/demo", expired.addr)]);
    expect(&d, "timestamp_expired");
    assert!(
        d.json["summary"]
            .as_str()
            .unwrap()
            .contains("ahead of the server"),
        "{}",
        d.json
    );
}
