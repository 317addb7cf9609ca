//! Peers for the doctor tests: tinyproxy with extra config lines (Timeout,
//! BasicAuth), nginx serving an `openssl req -x509` certificate, dnsmasq on a
//! loopback port, and two fault relays in front of a real peer: one that
//! alternates between forwarding and resetting connections, one that
//! silently stops forwarding a tunnel once it has been idle too long.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{dnsmasq, free_port, spawn_nginx, temp_dir, wait_started, write_file, Child};

/// tinyproxy on a free port with extra configuration lines.
pub struct TinyproxyWith {
    pub child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TinyproxyWith {
    /// `extra`: lines such as `Timeout 3` or `BasicAuth user pass`.
    pub fn start(extra: &str) -> TinyproxyWith {
        let dir = temp_dir("tinyproxy-x", true);
        let port = free_port();
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nMaxClients 200\nLogLevel Critical\n"
        );
        if !extra.contains("Timeout") {
            conf += "Timeout 60\n";
        }
        conf += extra;
        conf += "\n";
        let conf_path = dir.path().join("tinyproxy.conf");
        write_file(&conf_path, conf, 0o644);
        let mut cmd = Command::new("tinyproxy");
        cmd.arg("-d").arg("-c").arg(&conf_path);
        let mut child = Child::spawn("tinyproxy", cmd, dir.path());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_started(&mut child, addr, "tinyproxy");
        TinyproxyWith {
            child,
            addr,
            _dir: dir,
        }
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// nginx serving HTTPS with a certificate from `openssl req -x509` (a CA
/// certificate used as the server's own, the common hand-made setup).
pub struct SelfSignedNginx {
    pub child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl SelfSignedNginx {
    pub fn start() -> SelfSignedNginx {
        let dir = temp_dir("nginx-x509", false);
        let d = dir.path();
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
            ])
            .arg(d.join("key.pem"))
            .arg("-out")
            .arg(d.join("cert.pem"))
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::set_permissions(
            d.join("key.pem"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let www = d.join("www");
        std::fs::create_dir(&www).unwrap();
        write_file(&www.join("index.html"), "hello\n", 0o644);
        let port = free_port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/cert.pem;\n\
             ssl_certificate_key {d}/key.pem; root {d}/www; }} }}\n",
            d = d.display()
        );
        let mut child = spawn_nginx("nginx-x509", d, &conf);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_started(&mut child, addr, "nginx (openssl x509)");
        SelfSignedNginx { child, addr, dir }
    }
    pub fn url(&self) -> String {
        format!("https://{}/", self.addr)
    }
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
}

/// dnsmasq answering fixed names on a loopback UDP port, with no upstream
/// servers: nothing leaves the machine.
pub struct Dnsmasq {
    pub child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    pub fn start(names: &[(&str, &str)]) -> Dnsmasq {
        let dir = temp_dir("dnsmasq", true);
        let mut b = dnsmasq::Builder::new(free_port(), dir.path());
        for (n, ip) in names {
            b = b.address(n, ip);
        }
        let child = b.spawn();
        let addr = b.addr();
        Dnsmasq {
            child,
            addr,
            _dir: dir,
        }
    }
}

/// Copies `from` → `to` until EOF, error or stop; `last` is the shared time
/// of the last byte either way; when `cut` is set and the connection has been
/// idle that long, bytes are swallowed from then on (a silent idle cut).
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    stop: Arc<AtomicBool>,
    last: Arc<Mutex<Instant>>,
    cut: Option<Duration>,
    dead: Arc<AtomicBool>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => {
                if !dead.load(Ordering::Relaxed) {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => {
                let mut l = last.lock().unwrap();
                if let Some(c) = cut {
                    if l.elapsed() >= c {
                        dead.store(true, Ordering::Relaxed);
                    }
                }
                if dead.load(Ordering::Relaxed) {
                    continue; // swallowed: never forwarded, never answered
                }
                *l = Instant::now();
                drop(l);
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A TCP relay in front of `upstream`.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicUsize>,
}

impl Relay {
    /// Connections alternate: the 1st is forwarded, the 2nd reset, …
    pub fn flapping(upstream: SocketAddr) -> Relay {
        Relay::start(upstream, None, true)
    }

    /// Forwards, but a tunnel idle for `cut` is silently dead from then on.
    pub fn idle_dropping(upstream: SocketAddr, cut: Duration) -> Relay {
        Relay::start(upstream, Some(cut), false)
    }

    fn start(upstream: SocketAddr, cut: Option<Duration>, flap: bool) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (st, acc) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let n = acc.fetch_add(1, Ordering::SeqCst);
                let _ = c.set_nonblocking(false);
                if flap && n % 2 == 1 {
                    let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                    drop(c);
                    continue;
                }
                let Ok(u) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
                    continue;
                };
                let last = Arc::new(Mutex::new(Instant::now()));
                let dead = Arc::new(AtomicBool::new(false));
                let (c2, u2) = (c.try_clone().unwrap(), u.try_clone().unwrap());
                for (a, b) in [(c, u), (u2, c2)] {
                    let (s, l2, d2) = (st.clone(), last.clone(), dead.clone());
                    std::thread::spawn(move || pump(a, b, s, l2, cut, d2));
                }
            }
        });
        Relay {
            addr,
            stop,
            accepted,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One doctor run, rendered both ways.
pub struct Doc {
    pub code: i32,
    pub json: serde_json::Value,
    pub human: String,
    pub stderr: String,
}

/// Runs `proxyguard doctor ARGS` with `--json` and without.
pub fn doctor(args: &[&str]) -> Doc {
    let mut a = vec!["doctor"];
    a.extend_from_slice(args);
    let mut j = a.clone();
    j.push("--json");
    let out = super::proxyguard_run(&j, &[("NO_COLOR", "1")], Duration::from_secs(120));
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json output is not JSON ({e}): {out:?}"));
    let h = super::proxyguard_run(&a, &[("NO_COLOR", "1")], Duration::from_secs(120));
    assert_eq!(h.code, out.code, "human and JSON exit codes differ: {h:?}");
    Doc {
        code: out.code,
        json,
        human: h.stdout,
        stderr: h.stderr,
    }
}

/// Asserts the diagnosed cause in both renderings, and no Debug output.
pub fn expect_cause(d: &Doc, cause: &str) {
    assert_eq!(d.json["cause"], cause, "{}\n{}", d.json, d.human);
    assert_eq!(d.code, 1, "a diagnosed cause exits 1");
    assert!(d.human.contains(&format!("cause: {cause}")), "{}", d.human);
    for debugish in ["Other(", "OtherError", "Some(", "InvalidCertificate"] {
        assert!(
            !d.human.contains(debugish),
            "Debug output in the report:\n{}",
            d.human
        );
    }
}

/// The detail of the step named `name` in the JSON report.
pub fn step_detail(d: &Doc, name: &str) -> String {
    d.json["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .and_then(|s| s["detail"].as_str())
        .unwrap_or_else(|| panic!("no step {name}: {}", d.json))
        .to_string()
}

/// An `https://` proxy: nginx's stream module terminating TLS (the test
/// CA's certificate, valid for 127.0.0.1) in front of a real HTTP proxy.
pub struct TlsProxy {
    pub child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TlsProxy {
    pub fn start(upstream: SocketAddr, ca: &super::TestCa) -> TlsProxy {
        let dir = temp_dir("nginx-tlsproxy", false);
        let d = dir.path();
        let port = free_port();
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             stream {{ server {{ listen 127.0.0.1:{port} ssl; proxy_pass {upstream};\n\
             ssl_certificate {cert}; ssl_certificate_key {key}; }} }}\n",
            d = d.display(),
            cert = ca.cert_path().display(),
            key = ca.key_path().display(),
        );
        let mut child = spawn_nginx("nginx-tlsproxy", d, &conf);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_started(&mut child, addr, "nginx stream (TLS proxy)");
        TlsProxy {
            child,
            addr,
            _dir: dir,
        }
    }
}
