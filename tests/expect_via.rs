//! `Expect: 100-continue` end to end with real curl against a real Python
//! `http.server` origin (one that answers 100, one that rejects before the
//! body, one that never answers 100), and `Via` on responses.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use support::*;

/// An origin that decides on `Expect: 100-continue` by path and prints
/// what it did (`continue P`, `rejected P`, `body P N`).
const ORIGIN: &str = r#"
import http.server, sys

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def refuse(self, status, close):
        print("rejected", self.path, flush=True)
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="origin"')
        self.send_header("Content-Length", "8")
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"no body\n")
        return False

    def handle_expect_100(self):
        if self.path.startswith("/reject"):
            return self.refuse(417, False)
        if self.path.startswith("/unauthorized"):
            return self.refuse(401, True)
        if self.path.startswith("/forbidden"):
            return self.refuse(403, False)
        if self.path.startswith("/silent"):
            return True  # ignores Expect: sends no 100, just reads the body
        print("continue", self.path, flush=True)
        return super().handle_expect_100()

    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        print("body", self.path, len(data), flush=True)
        out = ("got %d\n" % len(data)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

struct Origin {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Origin {
    fn start() -> Origin {
        let dir = temp_dir("expect-origin", false);
        let script = dir.path().join("origin.py");
        write_file(&script, ORIGIN, 0o644);
        let port = free_port();
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script).arg(port.to_string());
        let mut child = Child::spawn("origin", cmd, dir.path());
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        wait_started(&mut child, addr, "python origin");
        Origin {
            child,
            addr,
            _dir: dir,
        }
    }
    fn said(&self, line: &str) -> bool {
        self.child.stdout().lines().any(|l| l == line)
    }
}

fn gateway(tables: &str) -> Proxyguard {
    let addr = free_addr();
    Proxyguard::start(&format!(
        "[[listen]]\naddr = \"{addr}\"\nprotocol = \"http\"\n\n{tables}"
    ))
}

/// (status, bytes curl uploaded, body) of a POST with `Expect:
/// 100-continue` through `pg`. curl waits up to 30 s for the 100, so only
/// the gateway decides when the body goes.
fn post(pg: &Proxyguard, url: &str, body_bytes: usize) -> (u16, u64, String) {
    let dir = temp_dir("expect-curl", false);
    let data = dir.path().join("data");
    write_file(&data, vec![b'x'; body_bytes], 0o644);
    let out_path = dir.path().join("out");
    let mut cmd = Command::new("curl");
    for v in PROXY_ENV_VARS {
        cmd.env_remove(v);
    }
    cmd.args(["-sS", "--max-time", "40", "--expect100-timeout", "30"])
        .args(["-x", &format!("http://{}", pg.addr())])
        .args(["-H", "Expect: 100-continue"])
        .arg("--data-binary")
        .arg(format!("@{}", data.display()))
        .arg("-o")
        .arg(&out_path)
        .args(["-w", "%{http_code} %{size_upload}"])
        .arg(url);
    let out = run_cmd(cmd, Duration::from_secs(60));
    let mut it = out.stdout.split_whitespace();
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let uploaded = it.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    (status, uploaded, read_lossy(&out_path))
}

#[test]
fn the_upstream_decides_on_100_continue() {
    let origin = Origin::start();
    // A long fallback: nothing but the upstream's answer may release the body.
    let pg = gateway("[timeouts]\nexpect_continue = \"30s\"\n");
    let n = 200_000;

    let (status, up, body) = post(&pg, &format!("http://{}/accept", origin.addr), n);
    assert_eq!((status, up), (200, n as u64), "{body}\n{}", pg.logs());
    assert_eq!(body, format!("got {n}\n"));
    assert!(origin.said("continue /accept"), "{}", origin.child.log());

    // Refused before the body: the client gets the answer and never
    // uploads. (curl re-sends a request answered 417, so 417 is checked
    // with a raw client below.)
    let (status, up, body) = post(&pg, &format!("http://{}/forbidden", origin.addr), n);
    assert_eq!((status, up), (403, 0), "{body}\n{}", pg.logs());
    assert_eq!(body, "no body\n");
    // 401 from an origin that closes its connection likewise.
    let (status, up, body) = post(&pg, &format!("http://{}/unauthorized", origin.addr), n);
    assert_eq!((status, up), (401, 0), "{}", pg.logs());
    assert_eq!(body, "no body\n");

    // The first thing the client hears is the upstream's 417, not a 100
    // from the gateway.
    let mut s = std::net::TcpStream::connect(pg.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let url = format!("http://{}/reject", origin.addr);
    write!(
        s,
        "POST {url} HTTP/1.1\r\nHost: {}\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
        origin.addr
    )
    .unwrap();
    let head = rawclient::read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 417"), "{head}\n{}", pg.logs());
    let mut body = [0u8; 8];
    s.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"no body\n");
    // The unsent body cannot be skipped: the gateway closes the connection.
    assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0, "{}", pg.logs());

    for path in ["reject", "forbidden", "unauthorized"] {
        assert!(
            origin.said(&format!("rejected /{path}")),
            "{}",
            origin.child.log()
        );
        assert!(
            !origin.child.stdout().contains(&format!("body /{path}")),
            "{}",
            origin.child.log()
        );
    }

    // The gateway still works for the next request.
    let (status, up, _) = post(&pg, &format!("http://{}/accept-again", origin.addr), 10);
    assert_eq!((status, up), (200, 10), "{}", pg.logs());
}

#[test]
fn an_upstream_that_ignores_expect_gets_the_body_after_expect_continue() {
    let origin = Origin::start();
    let pg = gateway("[timeouts]\nexpect_continue = \"200ms\"\n");
    let (status, up, body) = post(&pg, &format!("http://{}/silent", origin.addr), 5000);
    assert_eq!((status, up), (200, 5000), "{body}\n{}", pg.logs());
    assert_eq!(body, "got 5000\n");
    assert!(origin.said("body /silent 5000"), "{}", origin.child.log());
}

#[test]
fn via_on_requests_and_responses_when_enabled() {
    let echo = EchoServer::start();
    let pg = gateway("[http]\nvia = true\n");
    let r = curl(&["-x", &pg.url(), &format!("{}/via", echo.url())]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.to_ascii_lowercase().contains("via: 1.1 proxyguard"),
        "request: {}",
        r.body
    );
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("via: 1.1 proxyguard"),
        "response: {}",
        r.headers
    );

    let plain = gateway("");
    let r = curl(&["-x", &plain.url(), &format!("{}/no-via", echo.url())]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body.to_ascii_lowercase().contains("via:"), "{}", r.body);
    assert!(
        !r.headers.to_ascii_lowercase().contains("via:"),
        "{}",
        r.headers
    );
}
