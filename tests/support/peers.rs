//! Real peers on loopback: tinyproxy, squid, dante, microsocks, nginx.

use super::*;

pub const PEER_START_TIMEOUT: Duration = Duration::from_secs(20);

pub fn wait_started(child: &mut Child, addr: SocketAddr, what: &str) {
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

/// squid in the foreground (`-N`) with the configuration `conf` (written to
/// `d/squid.conf`; its cache log `d/cache.log` joins the child's log), once
/// it accepts on `127.0.0.1:port`.
pub fn spawn_squid(d: &Path, conf: &str, port: u16) -> (Child, SocketAddr) {
    let conf_path = d.join("squid.conf");
    write_file(&conf_path, conf, 0o644);
    let mut cmd = Command::new("squid");
    cmd.arg("-N").arg("-f").arg(&conf_path);
    let mut child = Child::spawn("squid", cmd, d);
    child.add_log(d.join("cache.log"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_started(&mut child, addr, "squid");
    (child, addr)
}

/// nginx with prefix `d` and the configuration `conf` (written to
/// `d/nginx.conf`; `d/error.log` joins the child's log). `conf` must keep it
/// in the foreground; the caller waits for its ports.
pub fn spawn_nginx(name: &str, d: &Path, conf: &str) -> Child {
    let conf_path = d.join("nginx.conf");
    write_file(&conf_path, conf, 0o644);
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(d)
        .arg("-e")
        .arg(d.join("error.log"))
        .arg("-c")
        .arg(&conf_path);
    let mut child = Child::spawn(name, cmd, d);
    child.add_log(d.join("error.log"));
    child
}

pub fn userinfo(auth: Option<(&str, &str)>) -> String {
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

    /// `n` tinyproxies that log every request (see [`Tinyproxy::requests`]).
    pub fn many(n: usize) -> Vec<Tinyproxy> {
        (0..n)
            .map(|_| {
                Tinyproxy::start(TinyOpts {
                    connect_ports: None,
                    logged: true,
                })
            })
            .collect()
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
        let (child, addr) = spawn_squid(d, &conf, port);
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
        let mut child = spawn_nginx("nginx", d, &conf);
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
