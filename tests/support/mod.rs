//! Reusable integration-test harness for proxyguard.
//!
//! Use it from an integration test with `mod support;`. Every test binary
//! only uses a subset, hence the `dead_code` allowances.
//!
//! Everything here talks to loopback only, every wait is bounded and every
//! spawned process is killed (process group, SIGTERM then SIGKILL) on drop.
#![allow(dead_code)]

pub mod faults;
pub mod hey;
pub mod rawclient;

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

fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn count_lines_containing(path: &Path, needle: &str) -> usize {
    read_lossy(path)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------
// Child process guard
// ---------------------------------------------------------------------------

/// A spawned process (in its own process group) with stdout/stderr in files
/// under `dir`. Drop sends SIGTERM to the group, waits a short grace, then
/// SIGKILLs the group and reaps the child.
pub struct Child {
    name: String,
    child: Option<std::process::Child>,
    dir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    extra_logs: Vec<PathBuf>,
    grace: Duration,
}

impl Child {
    /// Spawns `cmd`, logging to `dir/<name>.stdout` and `dir/<name>.stderr`.
    /// Proxy env vars are removed unless the caller set them on `cmd`
    /// afterwards (use [`Child::spawn_env`] to set them explicitly).
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Child {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe. If the spawning thread dies
        // without dropping us (e.g. the test process is killed), the direct
        // child is killed too.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Child {
            name: name.to_string(),
            child: Some(child),
            dir: dir.to_path_buf(),
            stdout,
            stderr,
            extra_logs: Vec::new(),
            grace: Duration::from_secs(3),
        }
    }

    /// Like `spawn`, clearing proxy env vars first, then setting `env`.
    pub fn spawn_env(name: &str, mut cmd: Command, dir: &Path, env: &[(&str, &str)]) -> Child {
        for v in PROXY_ENV_VARS {
            cmd.env_remove(v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Child::spawn(name, cmd, dir)
    }

    /// Also include this file in [`Child::log`].
    pub fn add_log(&mut self, path: PathBuf) {
        self.extra_logs.push(path);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Some(exit status) if the process has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the whole process group immediately and reap the child.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            // SAFETY: plain kill(2) on our own child's process group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to the process (not the group), e.g. SIGHUP / SIGSTOP.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Graceful stop: SIGTERM to the group, grace period, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let pid = c.id() as i32;
            if c.try_wait().ok().flatten().is_none() {
                // SAFETY: plain kill(2) on our own child's process group.
                unsafe {
                    libc::kill(-pid, libc::SIGTERM);
                }
                let deadline = Instant::now() + self.grace;
                while Instant::now() < deadline {
                    if c.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        // Leftover group members (workers, helpers) get SIGKILL too.
        self.kill9();
    }

    /// stdout + stderr + extra log files, for assertion messages.
    pub fn log(&self) -> String {
        let mut s = format!("===== {} (pid {}) stdout =====\n", self.name, self.pid());
        s += &read_lossy(&self.stdout);
        s += &format!("\n===== {} stderr =====\n", self.name);
        s += &read_lossy(&self.stderr);
        for p in &self.extra_logs {
            s += &format!("\n===== {} =====\n", p.display());
            s += &read_lossy(p);
        }
        s
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Output of a bounded one-shot command.
#[derive(Debug, Clone)]
pub struct CmdOut {
    /// Exit code; -1 when killed by a signal or by the timeout.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Runs `cmd` to completion (stdin null), killing it after `timeout`.
pub fn run_cmd(mut cmd: Command, timeout: Duration) -> CmdOut {
    let dir = temp_dir("cmd", false);
    let out_p = dir.path().join("stdout");
    let err_p = dir.path().join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_p).unwrap())
        .stderr(fs::File::create(&err_p).unwrap())
        .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // SAFETY: plain kill(2) on our own child's process group.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CmdOut {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: read_lossy(&out_p),
        stderr: read_lossy(&err_p),
        timed_out,
    }
}

// ---------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------

/// Result of [`curl`].
#[derive(Debug, Clone)]
pub struct CurlOut {
    /// `%{http_code}` (0 when no HTTP response was received).
    pub status: u16,
    /// `%{http_connect}`: status of the proxy's answer to CONNECT (0 if none).
    pub connect_status: u16,
    /// Response body (lossy UTF-8).
    pub body: String,
    /// Exact number of body bytes received.
    pub body_len: usize,
    /// Response headers as received (`-D`), including CONNECT responses.
    pub headers: String,
    pub stderr: String,
    /// curl's exit code (-1 if it was killed).
    pub exit_code: i32,
}

/// Default curl `--max-time`, in seconds.
pub const CURL_MAX_TIME: u64 = 20;

/// Runs `curl -sS --max-time 20 <args>` with proxy env vars cleared.
/// A later `--max-time` in `args` overrides the default.
pub fn curl(args: &[&str]) -> CurlOut {
    curl_env(args, &[])
}

/// Like [`curl`] with extra environment variables.
pub fn curl_env(args: &[&str], env: &[(&str, &str)]) -> CurlOut {
    let dir = temp_dir("curl", false);
    let body_p = dir.path().join("body");
    let hdr_p = dir.path().join("headers");
    let mut cmd = Command::new("curl");
    for v in PROXY_ENV_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.arg("-sS")
        .arg("--max-time")
        .arg(CURL_MAX_TIME.to_string())
        .arg("-o")
        .arg(&body_p)
        .arg("-D")
        .arg(&hdr_p)
        .arg("-w")
        .arg("%{http_code} %{http_connect}")
        .args(args);
    let out = run_cmd(cmd, Duration::from_secs(CURL_MAX_TIME * 3 + 10));
    let mut it = out.stdout.split_whitespace();
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let connect_status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let body_bytes = fs::read(&body_p).unwrap_or_default();
    CurlOut {
        status,
        connect_status,
        body_len: body_bytes.len(),
        body: String::from_utf8_lossy(&body_bytes).into_owned(),
        headers: read_lossy(&hdr_p),
        stderr: out.stderr,
        exit_code: out.code,
    }
}

// ---------------------------------------------------------------------------
// Test CA
// ---------------------------------------------------------------------------

/// Names in the default leaf certificate.
pub const DEFAULT_LEAF_NAMES: &[&str] = &["origin.test", "localhost", "127.0.0.1", "::1"];

/// A leaf certificate and key, written as PEM files.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Leaf {
    /// A rustls server config (ring provider, HTTP/1.1 ALPN) for this leaf.
    pub fn server_config(&self) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("leaf cert pem");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("leaf key pem");
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg
    }
}

/// A throwaway CA (rcgen) plus a default leaf for [`DEFAULT_LEAF_NAMES`].
/// Files: `ca.pem`, `cert.pem` (leaf followed by nothing else), `key.pem`.
pub struct TestCa {
    dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    pub ca_pem: String,
    pub default_leaf: Leaf,
    counter: AtomicUsize,
}

impl TestCa {
    pub fn new() -> TestCa {
        Self::with_name("proxyguard test CA")
    }

    /// A CA with the given common name (e.g. one that looks like a
    /// TLS-inspecting proxy's).
    pub fn with_name(common_name: &str) -> TestCa {
        let dir = temp_dir("ca", false);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(86400)).into();
        params.not_after = (now + Duration::from_secs(86400 * 365)).into();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca_pem = ca_cert.pem();
        write_file(&dir.path().join("ca.pem"), &ca_pem, 0o644);
        let mut ca = TestCa {
            dir,
            ca_cert,
            ca_key,
            ca_pem,
            default_leaf: Leaf {
                cert_pem: String::new(),
                key_pem: String::new(),
                cert_path: PathBuf::new(),
                key_path: PathBuf::new(),
            },
            counter: AtomicUsize::new(0),
        };
        let leaf = ca.make_leaf(
            DEFAULT_LEAF_NAMES,
            now - Duration::from_secs(86400),
            now + Duration::from_secs(86400 * 30),
            "cert.pem",
            "key.pem",
        );
        ca.default_leaf = leaf;
        ca
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of `ca.pem`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Path of the default leaf's `cert.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.default_leaf.cert_path.clone()
    }

    /// Path of the default leaf's `key.pem`.
    pub fn key_path(&self) -> PathBuf {
        self.default_leaf.key_path.clone()
    }

    /// A new leaf signed by this CA (names: DNS names or IP literals).
    pub fn leaf(&self, names: &[&str], not_before: SystemTime, not_after: SystemTime) -> Leaf {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        self.make_leaf(
            names,
            not_before,
            not_after,
            &format!("leaf{n}-cert.pem"),
            &format!("leaf{n}-key.pem"),
        )
    }

    /// Default names, expired yesterday.
    pub fn expired_leaf(&self) -> Leaf {
        let now = SystemTime::now();
        self.leaf(
            DEFAULT_LEAF_NAMES,
            now - Duration::from_secs(86400 * 10),
            now - Duration::from_secs(86400),
        )
    }

    /// Valid dates, but only for `wrong.test`.
    pub fn wrong_name_leaf(&self) -> Leaf {
        let now = SystemTime::now();
        self.leaf(
            &["wrong.test"],
            now - Duration::from_secs(86400),
            now + Duration::from_secs(86400 * 30),
        )
    }

    /// rustls server config for the default leaf.
    pub fn server_config(&self) -> rustls::ServerConfig {
        self.default_leaf.server_config()
    }

    fn make_leaf(
        &self,
        names: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
        cert_file: &str,
        key_file: &str,
    ) -> Leaf {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("leaf"),
        );
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let leaf = Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path: self.dir.path().join(cert_file),
            key_path: self.dir.path().join(key_file),
        };
        write_file(&leaf.cert_path, &leaf.cert_pem, 0o644);
        write_file(&leaf.key_path, &leaf.key_pem, 0o644);
        leaf
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

const PEER_START_TIMEOUT: Duration = Duration::from_secs(20);

fn wait_started(child: &mut Child, addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + PEER_START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Some(st) = child.try_exit() {
            panic!(
                "{what} exited ({st}) before listening on {addr}\n{}",
                child.log()
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "{what} did not listen on {addr} within {PEER_START_TIMEOUT:?}\n{}",
                child.log()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn userinfo(auth: Option<(&str, &str)>) -> String {
    match auth {
        Some((u, p)) => format!("{u}:{p}@"),
        None => String::new(),
    }
}

/// Options for [`Tinyproxy`].
#[derive(Debug, Clone, Default)]
pub struct TinyOpts {
    /// `ConnectPort` lines; None = CONNECT allowed to any port.
    pub connect_ports: Option<Vec<u16>>,
    /// Log every request (LogLevel Connect) so [`Tinyproxy::requests`] works.
    /// Off by default: per-request logging slows tinyproxy down a lot.
    pub logged: bool,
}

/// tinyproxy on a free loopback port (HTTP proxy, plain + CONNECT).
pub struct Tinyproxy {
    pub child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    pub fn start(opts: TinyOpts) -> Tinyproxy {
        let dir = temp_dir("tinyproxy", true);
        let port = free_port();
        let log_path = dir.path().join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nMaxClients 2000\nTimeout 60\n\
             LogFile \"{}\"\nLogLevel {}\n",
            log_path.display(),
            if opts.logged { "Connect" } else { "Critical" }
        );
        for p in opts.connect_ports.iter().flatten() {
            conf += &format!("ConnectPort {p}\n");
        }
        let conf_path = dir.path().join("tinyproxy.conf");
        write_file(&conf_path, conf, 0o644);
        let mut cmd = Command::new("tinyproxy");
        cmd.arg("-d").arg("-c").arg(&conf_path);
        let mut child = Child::spawn("tinyproxy", cmd, dir.path());
        child.add_log(log_path.clone());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_started(&mut child, addr, "tinyproxy");
        Tinyproxy {
            child,
            addr,
            log_path,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// `http://127.0.0.1:P`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Requests seen (needs `TinyOpts::logged`): one per proxied request or CONNECT.
    pub fn requests(&self) -> usize {
        count_lines_containing(&self.log_path, "Request (file descriptor")
    }
    pub fn log(&self) -> String {
        self.child.log()
    }
}

/// squid on a free loopback port, optionally with basic auth.
pub struct Squid {
    pub child: Child,
    addr: SocketAddr,
    auth: Option<(String, String)>,
    access_log: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Squid {
    /// No access log.
    pub fn start(auth: Option<(&str, &str)>) -> Squid {
        Squid::start_inner(auth, false)
    }

    /// With an access log, so [`Squid::requests`] works.
    pub fn start_logged(auth: Option<(&str, &str)>) -> Squid {
        Squid::start_inner(auth, true)
    }

    fn start_inner(auth: Option<(&str, &str)>, logged: bool) -> Squid {
        // squid drops to user `proxy`: everything it writes must be writable by it.
        let dir = temp_dir("squid", true);
        let d = dir.path();
        let port = free_port();
        let access_log = d.join("access.log");
        let mut conf = format!(
            "http_port 127.0.0.1:{port}\n\
             cache deny all\ncache_mem 0 MB\n\
             cache_log {d}/cache.log\npid_filename {d}/squid.pid\n\
             pinger_enable off\nshutdown_lifetime 1 second\n\
             coredump_dir {d}\nnetdb_filename none\nlogfile_rotate 0\n\
             dns_nameservers 127.0.0.1\nbuffered_logs off\n\
             visible_hostname proxyguard-test\n\
             max_filedescriptors 8192\n",
            d = d.display()
        );
        if logged {
            conf += &format!("access_log stdio:{}\n", access_log.display());
        } else {
            conf += "access_log none\n";
        }
        if let Some((user, pass)) = auth {
            let out = run_cmd(
                {
                    let mut c = Command::new("openssl");
                    c.args(["passwd", "-apr1", pass]);
                    c
                },
                Duration::from_secs(10),
            );
            assert_eq!(out.code, 0, "openssl passwd failed: {}", out.stderr);
            let passwd = d.join("passwd");
            write_file(&passwd, format!("{user}:{}\n", out.stdout.trim()), 0o644);
            conf += &format!(
                "auth_param basic program /usr/lib/squid/basic_ncsa_auth {}\n\
                 auth_param basic children 2 startup=1\n\
                 auth_param basic realm proxyguard-test\n\
                 acl authed proxy_auth REQUIRED\n\
                 http_access allow authed\nhttp_access deny all\n",
                passwd.display()
            );
        } else {
            conf += "http_access allow localhost\nhttp_access deny all\n";
        }
        let conf_path = d.join("squid.conf");
        write_file(&conf_path, conf, 0o644);
        let mut cmd = Command::new("squid");
        cmd.arg("-N").arg("-f").arg(&conf_path);
        let mut child = Child::spawn("squid", cmd, d);
        child.add_log(d.join("cache.log"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_started(&mut child, addr, "squid");
        Squid {
            child,
            addr,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            access_log: logged.then_some(access_log),
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// `http://[user:pass@]127.0.0.1:P`
    pub fn url(&self) -> String {
        let a = self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        format!("http://{}{}", userinfo(a), self.addr)
    }
    /// `http://127.0.0.1:P` without credentials.
    pub fn url_no_auth(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Access-log lines (needs `start_logged`), not counting connections
    /// closed before any request (e.g. port probes). Includes 407 answers.
    /// squid writes a line when a transaction ends (CONNECT: when the tunnel closes).
    pub fn requests(&self) -> usize {
        self.access_log
            .as_ref()
            .map(|p| {
                read_lossy(p)
                    .lines()
                    .filter(|l| !l.contains("transaction-end-before-headers"))
                    .count()
            })
            .unwrap_or(0)
    }
    pub fn access_log(&self) -> String {
        self.access_log
            .as_ref()
            .map(|p| read_lossy(p))
            .unwrap_or_default()
    }
    pub fn log(&self) -> String {
        self.child.log()
    }
}

/// Creates (if missing) the system user `user` and sets its password.
/// Needs root. Used for dante's `username` method.
pub fn ensure_system_user(user: &str, pass: &str) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        is_root(),
        "ensure_system_user({user}) needs root (dante username auth checks system users)"
    );
    let id = run_cmd(
        {
            let mut c = Command::new("id");
            c.arg(user);
            c
        },
        Duration::from_secs(10),
    );
    if id.code != 0 {
        let out = run_cmd(
            {
                let mut c = Command::new("useradd");
                c.args(["-M", "-s", "/usr/sbin/nologin", user]);
                c
            },
            Duration::from_secs(20),
        );
        assert_eq!(out.code, 0, "useradd {user}: {}", out.stderr);
    }
    let mut c = Command::new("chpasswd");
    c.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut ch = c.spawn().expect("spawn chpasswd");
    ch.stdin
        .take()
        .unwrap()
        .write_all(format!("{user}:{pass}\n").as_bytes())
        .unwrap();
    let out = ch.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chpasswd {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// dante SOCKS5 server on a free loopback port. With auth it uses the
/// `username` method against a real system user (created if missing).
pub struct Dante {
    pub child: Child,
    addr: SocketAddr,
    auth: Option<(String, String)>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dante {
    pub fn start(auth: Option<(&str, &str)>) -> Dante {
        if let Some((u, p)) = auth {
            ensure_system_user(u, p);
        }
        let dir = temp_dir("dante", true);
        let d = dir.path();
        let port = free_port();
        let log_path = d.join("danted.log");
        let method = if auth.is_some() { "username" } else { "none" };
        let conf = format!(
            "logoutput: {log}\n\
             internal: 127.0.0.1 port = {port}\n\
             external: 127.0.0.1\n\
             clientmethod: none\n\
             socksmethod: {method}\n\
             user.privileged: root\n\
             user.notprivileged: nobody\n\
             client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
             socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: connect }}\n",
            log = log_path.display()
        );
        let conf_path = d.join("danted.conf");
        write_file(&conf_path, conf, 0o644);
        let mut cmd = Command::new("danted");
        cmd.arg("-f")
            .arg(&conf_path)
            .arg("-p")
            .arg(d.join("danted.pid"));
        let mut child = Child::spawn("danted", cmd, d);
        child.add_log(log_path.clone());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_started(&mut child, addr, "danted");
        Dante {
            child,
            addr,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            log_path,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// `socks5://[user:pass@]127.0.0.1:P`
    pub fn url(&self) -> String {
        let a = self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        format!("socks5://{}{}", userinfo(a), self.addr)
    }
    /// Passed SOCKS CONNECTs (dante logs `pass(..): tcp/connect`).
    pub fn requests(&self) -> usize {
        count_lines_containing(&self.log_path, "tcp/connect")
    }
    pub fn log(&self) -> String {
        self.child.log()
    }
}

/// microsocks SOCKS5 server on a free loopback port (no request log).
pub struct Microsocks {
    pub child: Child,
    addr: SocketAddr,
    auth: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Microsocks {
    pub fn start(auth: Option<(&str, &str)>) -> Microsocks {
        let dir = temp_dir("microsocks", false);
        let port = free_port();
        let mut cmd = Command::new("microsocks");
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((u, p)) = auth {
            cmd.args(["-u", u, "-P", p]);
        }
        let mut child = Child::spawn("microsocks", cmd, dir.path());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_started(&mut child, addr, "microsocks");
        Microsocks {
            child,
            addr,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// `socks5://[user:pass@]127.0.0.1:P`
    pub fn url(&self) -> String {
        let a = self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        format!("socks5://{}{}", userinfo(a), self.addr)
    }
    pub fn log(&self) -> String {
        self.child.log()
    }
}

/// Options for [`Nginx`].
#[derive(Debug, Clone)]
pub struct NginxOpts {
    /// Size of `/big` in bytes.
    pub big_bytes: usize,
}

impl Default for NginxOpts {
    fn default() -> Self {
        NginxOpts {
            big_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Size of nginx's `/small`.
pub const SMALL_BYTES: usize = 200;

/// nginx origin: HTTP and HTTPS (test CA leaf) on free loopback ports.
/// Serves `/small` (200 bytes), `/big` (NginxOpts::big_bytes) and
/// `/health` ("ok"); logs every request to an access log.
pub struct Nginx {
    pub child: Child,
    http: SocketAddr,
    https: SocketAddr,
    big_bytes: usize,
    access_log: PathBuf,
    ca: TestCa,
    _dir: tempfile::TempDir,
}

/// Deterministic content for the static files: printable, line-structured.
pub fn pattern_bytes(n: usize) -> Vec<u8> {
    const LINE: &[u8] =
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-proxyguard\n";
    LINE.iter().copied().cycle().take(n).collect()
}

impl Nginx {
    pub fn start() -> Nginx {
        Nginx::start_with(NginxOpts::default())
    }

    pub fn start_with(opts: NginxOpts) -> Nginx {
        let ca = TestCa::new();
        let dir = temp_dir("nginx", false);
        let d = dir.path();
        let www = d.join("www");
        fs::create_dir(&www).unwrap();
        fs::set_permissions(&www, fs::Permissions::from_mode(0o755)).unwrap();
        write_file(&www.join("small"), pattern_bytes(SMALL_BYTES), 0o644);
        write_file(&www.join("big"), pattern_bytes(opts.big_bytes), 0o644);
        let tmp = d.join("tmp");
        fs::create_dir(&tmp).unwrap();
        let (hp, sp) = (free_port(), free_port());
        let access_log = d.join("access.log");
        // master_process off: a single process, so kill-on-drop is exact.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log {log};\n\
               client_body_temp_path {t}/body;\nproxy_temp_path {t}/proxy;\n\
               fastcgi_temp_path {t}/fastcgi;\nuwsgi_temp_path {t}/uwsgi;\nscgi_temp_path {t}/scgi;\n\
               default_type application/octet-stream;\n\
               keepalive_requests 100000;\n\
               server {{\n\
                 listen 127.0.0.1:{hp};\n\
                 listen 127.0.0.1:{sp} ssl;\n\
                 server_name _;\n\
                 ssl_certificate {cert};\nssl_certificate_key {key};\n\
                 root {www};\n\
                 location = /health {{ default_type text/plain; return 200 \"ok\"; }}\n\
               }}\n\
             }}\n",
            d = d.display(),
            t = tmp.display(),
            log = access_log.display(),
            cert = ca.cert_path().display(),
            key = ca.key_path().display(),
            www = www.display(),
        );
        let conf_path = d.join("nginx.conf");
        write_file(&conf_path, conf, 0o644);
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf_path);
        let mut child = Child::spawn("nginx", cmd, d);
        child.add_log(d.join("error.log"));
        let http = SocketAddr::from(([127, 0, 0, 1], hp));
        let https = SocketAddr::from(([127, 0, 0, 1], sp));
        wait_started(&mut child, http, "nginx");
        wait_started(&mut child, https, "nginx (https)");
        Nginx {
            child,
            http,
            https,
            big_bytes: opts.big_bytes,
            access_log,
            ca,
            _dir: dir,
        }
    }

    /// HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.http
    }
    pub fn port(&self) -> u16 {
        self.http.port()
    }
    pub fn https_addr(&self) -> SocketAddr {
        self.https
    }
    pub fn https_port(&self) -> u16 {
        self.https.port()
    }
    /// `http://127.0.0.1:P`
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }
    /// `https://127.0.0.1:S` (the leaf is valid for 127.0.0.1, localhost, origin.test)
    pub fn https_url(&self) -> String {
        format!("https://{}", self.https)
    }
    /// The CA that signed nginx's certificate.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }
    pub fn big_bytes(&self) -> usize {
        self.big_bytes
    }
    /// Requests nginx has answered (HTTP and HTTPS), from its access log.
    pub fn requests(&self) -> usize {
        read_lossy(&self.access_log).lines().count()
    }
    pub fn access_log(&self) -> String {
        read_lossy(&self.access_log)
    }
    pub fn log(&self) -> String {
        self.child.log()
    }
}

// ---------------------------------------------------------------------------
// In-process echo origin
// ---------------------------------------------------------------------------

#[derive(Default)]
struct EchoState {
    requests: AtomicUsize,
    connections: AtomicUsize,
    last: Mutex<Option<String>>,
}

/// In-process HTTP/1.1 origin on its own thread + tokio runtime (so it works
/// from sync tests and from `#[tokio::test]` alike).
///
/// Every request gets 200 and a text body:
/// ```text
/// GET /path HTTP/1.1          <- request line as received (origin- or absolute-form)
/// host: 127.0.0.1:P           <- every header, one per line, names lowercase
/// ...
///                             <- blank line
/// body-length: N              <- request body length
/// ```
/// Special paths: `/status/NNN` answers status NNN (same body, empty for
/// 1xx/204/304), `/delay/MS` sleeps MS (max 60000) before answering,
/// `/bytes/N` answers N pattern bytes (max 512 MiB) instead of the echo.
pub struct EchoServer {
    addr: SocketAddr,
    tls: bool,
    state: Arc<EchoState>,
    rt: Option<tokio::runtime::Runtime>,
}

impl EchoServer {
    /// Plain HTTP.
    pub fn start() -> EchoServer {
        EchoServer::start_inner(None)
    }

    /// HTTPS with the CA's default leaf.
    pub fn tls(ca: &TestCa) -> EchoServer {
        EchoServer::start_inner(Some(Arc::new(ca.server_config())))
    }

    /// HTTPS with a given leaf (expired / wrong name ...).
    pub fn tls_leaf(leaf: &Leaf) -> EchoServer {
        EchoServer::start_inner(Some(Arc::new(leaf.server_config())))
    }

    fn start_inner(tls: Option<Arc<rustls::ServerConfig>>) -> EchoServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("echo-server")
            .enable_all()
            .build()
            .unwrap();
        let std_l = TcpListener::bind("127.0.0.1:0").unwrap();
        std_l.set_nonblocking(true).unwrap();
        let addr = std_l.local_addr().unwrap();
        let state = Arc::new(EchoState::default());
        let is_tls = tls.is_some();
        let st = state.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_l).unwrap();
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                serve_echo(s, st).await;
                            }
                        }
                        None => serve_echo(tcp, st).await,
                    }
                });
            }
        });
        EchoServer {
            addr,
            tls: is_tls,
            state,
            rt: Some(rt),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// `http://127.0.0.1:P` or `https://127.0.0.1:P`
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
    /// Requests received so far (counted on receipt, before any `/delay`).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
    /// Echo text of the most recently received request.
    pub fn last_request(&self) -> Option<String> {
        self.state.last.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve_echo<S>(io: S, st: Arc<EchoState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, std::convert::Infallible>(echo_response(req, &st).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

async fn echo_response(
    req: hyper::Request<hyper::body::Incoming>,
    st: &EchoState,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (name, value) in req.headers() {
        text += &format!("{}: {}\n", name, String::from_utf8_lossy(value.as_bytes()));
    }
    let path = req.uri().path().to_string();
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    text += &format!("\nbody-length: {body_len}\n");
    st.requests.fetch_add(1, Ordering::SeqCst);
    *st.last.lock().unwrap() = Some(text.clone());

    let mut status = 200u16;
    let mut body = bytes::Bytes::from(text);
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some("status"), Some(code)) => {
            if let Ok(c) = code.parse::<u16>() {
                if (200..=999).contains(&c) {
                    status = c;
                }
            }
            if status == 204 || status == 304 {
                body = bytes::Bytes::new();
            }
        }
        (Some("delay"), Some(ms)) => {
            let ms = ms.parse::<u64>().unwrap_or(0).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        (Some("bytes"), Some(n)) => {
            let n = n.parse::<usize>().unwrap_or(0).min(512 << 20);
            body = bytes::Bytes::from(pattern_bytes(n));
        }
        _ => {}
    }
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header(
            "x-echo-requests",
            st.requests.load(Ordering::SeqCst).to_string(),
        )
        .body(http_body_util::Full::new(body))
        .unwrap()
}

// ---------------------------------------------------------------------------
// proxyguard itself
// ---------------------------------------------------------------------------

/// A running `proxyguard serve` (or any other subcommand).
pub struct Proxyguard {
    pub child: Child,
    addr: Option<SocketAddr>,
    config_path: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// Path of the proxyguard binary under test.
pub fn proxyguard_bin() -> &'static str {
    env!("CARGO_BIN_EXE_proxyguard")
}

/// All `[[listen]] addr` values of a config (accepts `host:port` or
/// `scheme://host:port`).
pub fn listen_addrs(config_toml: &str) -> Vec<SocketAddr> {
    let v: toml::Value = toml::from_str(config_toml).expect("config is not valid TOML");
    let mut out = Vec::new();
    if let Some(list) = v.get("listen").and_then(|l| l.as_array()) {
        for l in list {
            if let Some(a) = l.get("addr").and_then(|a| a.as_str()) {
                let a = a.rsplit("://").next().unwrap_or(a);
                if let Ok(sa) = a.parse() {
                    out.push(sa);
                }
            }
        }
    }
    out
}

impl Proxyguard {
    /// `serve --config FILE --log-format json`, proxy env cleared; waits for
    /// the first `[[listen]] addr` to accept.
    pub fn start(config_toml: &str) -> Proxyguard {
        Proxyguard::start_with(config_toml, &[], &[])
    }

    /// Like `start` with extra args (after the defaults) and env vars.
    pub fn start_with(config_toml: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Proxyguard {
        let dir = temp_dir("proxyguard", false);
        let config_path = dir.path().join("proxyguard.toml");
        write_file(&config_path, config_toml, 0o644);
        let addr = listen_addrs(config_toml).into_iter().next();
        let mut cmd = Command::new(proxyguard_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(["--log-format", "json"])
            .args(extra_args);
        let mut child = Child::spawn_env("proxyguard", cmd, dir.path(), env);
        if let Some(a) = addr {
            wait_started(&mut child, a, "proxyguard");
        }
        Proxyguard {
            child,
            addr,
            config_path: Some(config_path),
            _dir: dir,
        }
    }

    /// Arbitrary args (zero-config tests); does not wait for any port:
    /// use [`wait_port`] or [`Proxyguard::wait_listening`].
    pub fn start_with_args(args: &[&str], env: &[(&str, &str)]) -> Proxyguard {
        let dir = temp_dir("proxyguard", false);
        let mut cmd = Command::new(proxyguard_bin());
        cmd.args(args).current_dir(dir.path());
        let child = Child::spawn_env("proxyguard", cmd, dir.path(), env);
        Proxyguard {
            child,
            addr: None,
            config_path: None,
            _dir: dir,
        }
    }

    /// Waits (bounded) for `addr` to accept; panics with logs if the process
    /// exits or the timeout passes. Sets `addr()`.
    pub fn wait_listening(&mut self, addr: SocketAddr) {
        wait_started(&mut self.child, addr, "proxyguard");
        self.addr = Some(addr);
    }

    /// First listen address (panics if none is known).
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("proxyguard: no listen addr known")
    }
    /// `http://<first listen addr>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }
    /// stdout + stderr so far.
    pub fn logs(&self) -> String {
        self.child.log()
    }
    /// stderr/stdout lines that parse as JSON objects (json log format).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        let mut s = self.child.stdout();
        s += &self.child.stderr();
        s.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }
}

/// Runs a one-shot proxyguard command (e.g. `doctor`), proxy env cleared.
pub fn proxyguard_run(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> CmdOut {
    let mut cmd = Command::new(proxyguard_bin());
    for v in PROXY_ENV_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args);
    run_cmd(cmd, timeout)
}

// ---------------------------------------------------------------------------
// Go client
// ---------------------------------------------------------------------------

/// Options for one [`GoClient::run`]; `env` is applied after the proxy env
/// vars are cleared (set HTTP_PROXY / HTTPS_PROXY / NO_PROXY here).
#[derive(Debug, Clone)]
pub struct GoOpts {
    pub url: String,
    pub n: usize,
    pub c: usize,
    pub timeout: Duration,
    pub cafile: Option<PathBuf>,
    pub method: String,
    pub env: Vec<(String, String)>,
    /// Request body length in bytes (0: none).
    pub body: usize,
    pub keepalive: bool,
}

impl GoOpts {
    pub fn new(url: &str) -> GoOpts {
        GoOpts {
            url: url.to_string(),
            n: 1,
            c: 1,
            timeout: Duration::from_secs(10),
            cafile: None,
            method: "GET".into(),
            env: Vec::new(),
            body: 0,
            keepalive: true,
        }
    }
    /// Sends `len` bytes of body with each request (use with a method).
    pub fn body(mut self, len: usize) -> Self {
        self.body = len;
        self
    }
    /// A new connection per request.
    pub fn no_keepalive(mut self) -> Self {
        self.keepalive = false;
        self
    }
    pub fn n(mut self, n: usize) -> Self {
        self.n = n;
        self
    }
    pub fn c(mut self, c: usize) -> Self {
        self.c = c;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn cafile(mut self, p: impl Into<PathBuf>) -> Self {
        self.cafile = Some(p.into());
        self
    }
    pub fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Sets HTTP_PROXY and HTTPS_PROXY.
    pub fn proxy(self, url: &str) -> Self {
        self.env("HTTP_PROXY", url).env("HTTPS_PROXY", url)
    }
}

/// The Go client's JSON summary line.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct GoResult {
    pub ok: u64,
    pub failed: u64,
    pub statuses: HashMap<String, u64>,
    pub errors: HashMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub first_body: String,
    /// Not from Go: the client's stderr, for messages.
    #[serde(skip)]
    pub stderr: String,
}

impl GoResult {
    /// Count of responses with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.statuses.get(&status.to_string()).copied().unwrap_or(0)
    }
}

/// `tests/go/client` (Go 1.19, std lib only), built once per test process.
pub struct GoClient;

impl GoClient {
    /// Path of the built client binary (builds it on first use, offline).
    pub fn binary() -> &'static Path {
        static BIN: OnceLock<PathBuf> = OnceLock::new();
        BIN.get_or_init(|| {
            let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-client");
            fs::create_dir_all(&base).unwrap();
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/go/client/main.go");
            let tmp_out = base.join(format!("client.{}", std::process::id()));
            let mut cmd = Command::new("go");
            for v in PROXY_ENV_VARS {
                cmd.env_remove(v);
            }
            cmd.arg("build")
                .arg("-o")
                .arg(&tmp_out)
                .arg(&src)
                .env("GOCACHE", base.join("gocache"))
                .env("GOPATH", base.join("gopath"))
                .env("GO111MODULE", "off")
                .env("GOFLAGS", "")
                .env("GOPROXY", "off")
                .env("CGO_ENABLED", "0");
            let out = run_cmd(cmd, Duration::from_secs(300));
            assert!(
                out.code == 0,
                "go build failed ({}):\n{}\n{}",
                out.code,
                out.stdout,
                out.stderr
            );
            let bin = base.join("client");
            fs::rename(&tmp_out, &bin).unwrap();
            bin
        })
    }

    /// Runs the client; panics (with its stderr) if it prints no JSON line.
    pub fn run(opts: &GoOpts) -> GoResult {
        let mut cmd = Command::new(GoClient::binary());
        for v in PROXY_ENV_VARS {
            cmd.env_remove(v);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.arg("-url")
            .arg(&opts.url)
            .arg("-n")
            .arg(opts.n.to_string())
            .arg("-c")
            .arg(opts.c.to_string())
            .arg("-timeout")
            .arg(format!("{}ms", opts.timeout.as_millis()))
            .arg("-method")
            .arg(&opts.method)
            .arg("-body")
            .arg(opts.body.to_string())
            .arg(format!("-keepalive={}", opts.keepalive));
        if let Some(ca) = &opts.cafile {
            cmd.arg("-cafile").arg(ca);
        }
        let rounds = opts.n.div_ceil(opts.c.max(1)) as u32;
        let limit = opts.timeout * (rounds + 1) + Duration::from_secs(30);
        let out = run_cmd(cmd, limit);
        let line = out.stdout.lines().rev().find(|l| l.starts_with('{'));
        let mut res: GoResult = match line.map(serde_json::from_str) {
            Some(Ok(r)) => r,
            _ => panic!(
                "go client gave no JSON (exit {}, timed out {}):\nstdout: {}\nstderr: {}",
                out.code, out.timed_out, out.stdout, out.stderr
            ),
        };
        res.stderr = out.stderr;
        res
    }
}

// ---------------------------------------------------------------------------
// HTTP sink
// ---------------------------------------------------------------------------

/// A real HTTP receiver (webhooks, OTLP): records every request path and body.
pub struct HttpSink {
    pub addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl HttpSink {
    pub fn start() -> HttpSink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, st) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if data.len() >= i + 4 + len {
                            b.lock().unwrap().push(text[i + 4..i + 4 + len].to_string());
                            break;
                        }
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        HttpSink { addr, bodies, stop }
    }
    /// Every body received (lossy UTF-8).
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect()
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
pub mod doctor_peers;
