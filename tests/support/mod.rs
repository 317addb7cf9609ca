//! Reusable integration-test harness for proxyguard.
//!
//! Use it from an integration test with `mod support;`. Every test binary
//! only uses a subset, hence the `dead_code` allowances.
//!
//! Everything here talks to loopback only, every wait is bounded and every
//! spawned process is killed (process group, SIGTERM then SIGKILL) on drop.
#![allow(dead_code)]

pub mod browser;
pub mod discovery_peers;
pub mod dnsmasq;
pub mod doctor_peers;
pub mod etcd;
pub mod faults;
pub mod grid;
pub mod grpc;
pub mod hey;
pub mod netns;
pub mod rawclient;
pub mod websocket;

mod ca;
mod echo;
mod go;
mod peers;
mod process;
mod proxyguard;
mod sink;

// Each test binary uses a subset of these.
#[allow(unused_imports)]
pub use ca::*;
#[allow(unused_imports)]
pub use echo::*;
#[allow(unused_imports)]
pub use go::*;
#[allow(unused_imports)]
pub use peers::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use proxyguard::*;
#[allow(unused_imports)]
pub use sink::*;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Proxy-related environment variables cleared from every child by default.
pub const PROXY_ENV_VARS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

// ---------------------------------------------------------------------------
// Ports and temp dirs
// ---------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1, never the same one twice in this process.
pub fn free_port() -> u16 {
    static HANDED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed = HANDED.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if handed.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("free_port: no new free port after 200 tries");
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Waits until `addr` accepts a TCP connection; false after `timeout`.
pub fn wait_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Polls `f` every 20 ms until it returns true; false after `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh temp dir; `world` makes it 0777 (for peers that drop privileges).
pub fn temp_dir(prefix: &str, world: bool) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(&format!("pg-{prefix}-"))
        .tempdir()
        .expect("tempdir");
    let mode = if world { 0o777 } else { 0o755 };
    fs::set_permissions(d.path(), fs::Permissions::from_mode(mode)).unwrap();
    d
}

pub fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub fn count_lines_containing(path: &Path, needle: &str) -> usize {
    read_lossy(path)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
