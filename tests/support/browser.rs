//! Headless Chromium for pages that need their scripts run.
//!
//! Chromium looks names up on its own (google.com, accounts.google.com,
//! update.googleapis.com, even with background networking off), so it runs
//! in a network namespace with only `lo` and a resolv.conf naming that
//! loopback: no lookup leaves the machine. The page (on the host's loopback)
//! is reached through a relay listening inside the namespace.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::netns::Netns;
use super::{run_cmd, temp_dir, CmdOut};

/// Copies `from` → `to` until EOF or error, then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Listens on the namespace's `127.0.0.1:port` and relays each connection
/// to the host's `to` until `stop` is set.
fn relay_into(ns: &Netns, to: SocketAddr, stop: Arc<AtomicBool>) -> u16 {
    let listener = {
        let _inside = ns.enter();
        TcpListener::bind("127.0.0.1:0").expect("bind in the namespace")
    };
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    // Spawned from this (host) thread: its connects go to the host's loopback.
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((inner, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let _ = inner.set_nonblocking(false);
            let Ok(outer) = TcpStream::connect(to) else {
                continue;
            };
            let (i2, o2) = (inner.try_clone().unwrap(), outer.try_clone().unwrap());
            std::thread::spawn(move || pump(inner, outer));
            std::thread::spawn(move || pump(o2, i2));
        }
    });
    port
}

/// Runs headless Chromium on `url` (`http://IP:PORT/...` on the host's
/// loopback) with `args` (e.g. `--dump-dom`, `--screenshot=FILE`), inside a
/// fresh namespace (see the module docs).
pub fn chromium_run(url: &str, args: &[&str]) -> CmdOut {
    let u = url::Url::parse(url).expect("page URL");
    let to: SocketAddr = format!(
        "{}:{}",
        u.host_str().expect("page host"),
        u.port_or_known_default().unwrap_or(80)
    )
    .parse()
    .expect("the page is addressed by loopback IP:port");
    let ns = Netns::new();
    let stop = Arc::new(AtomicBool::new(false));
    let port = relay_into(&ns, to, stop.clone());
    let mut inside = u.clone();
    inside.set_port(Some(port)).unwrap();
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .expect("chromium is required (scripts/test installs Debian's chromium)");
    let profile = temp_dir("chromium", false);
    let mut c = ns.command(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=4000",
        "--window-size=1280,860",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(inside.as_str());
    let out = run_cmd(c, Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    out
}

/// The DOM of `url` after its scripts ran (virtual time 4 s), from headless
/// Chromium ([`chromium_run`]); panics with the output when Chromium fails.
pub fn chromium_dom(url: &str) -> String {
    let out = chromium_run(url, &["--dump-dom"]);
    assert!(!out.timed_out && out.code == 0, "chromium failed: {out:?}");
    out.stdout
}
