//! Peers for the discovery tests: dnsmasq serving A and SRV records from a
//! hosts file it re-reads on SIGHUP, and tinyproxy on a chosen loopback
//! address (several proxies on one port, as A records need).

use super::*;

/// dnsmasq on a loopback port answering only from its own records
/// (`--local=/test/`: names under `.test` never leave the machine, and a
/// missing record is NXDOMAIN/NODATA). A records come from a hosts file
/// re-read on SIGHUP; SRV records are fixed for the life of the process.
pub struct HostsDns {
    child: Option<Child>,
    pub addr: SocketAddr,
    srv: Vec<String>,
    dir: tempfile::TempDir,
}

impl HostsDns {
    /// `hosts`: hosts-file text (`127.0.0.2 egress.test`); `srv`: dnsmasq
    /// `--srv-host` values (`_proxy._tcp.egress.test,proxy-a.test,3128,0,10`).
    pub fn start(hosts: &str, srv: &[String]) -> HostsDns {
        let mut d = HostsDns {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            srv: srv.to_vec(),
            dir: temp_dir("dnsmasq-hosts", true),
        };
        write_file(&d.hosts_path(), hosts, 0o644);
        d.spawn(true);
        d
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// Starts dnsmasq; `local` = authoritative for `.test` (else names it
    /// does not hold are answered REFUSED: there is no upstream server).
    fn spawn(&mut self, local: bool) {
        let mut b = dnsmasq::Builder::new(self.addr.port(), self.dir.path())
            .local_ttl(1)
            .addn_hosts(&self.hosts_path());
        if local {
            b = b.local_test();
        }
        for s in &self.srv {
            b = b.srv_host(s);
        }
        let child = b.spawn();
        self.child = Some(child);
    }

    /// Replaces the hosts file and makes dnsmasq re-read it (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) {
        write_file(&self.hosts_path(), hosts, 0o644);
        if let Some(c) = &self.child {
            c.signal(libc::SIGHUP);
        }
    }

    /// SIGKILL: queries go unanswered until a restart.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill9();
        }
    }

    /// Starts again on the same port; `local = false` makes it answer
    /// REFUSED for every name it does not hold (a broken name server).
    pub fn restart(&mut self, local: bool) {
        self.kill();
        self.spawn(local);
    }

    pub fn log(&self) -> String {
        self.child.as_ref().map(|c| c.log()).unwrap_or_default()
    }
}

/// tinyproxy listening on `addr` (any 127.0.0.0/8 address), allowing
/// loopback clients.
pub struct TinyAt {
    pub child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TinyAt {
    pub fn start(addr: SocketAddr) -> TinyAt {
        let dir = temp_dir("tinyproxy-at", true);
        let conf = format!(
            "Port {}\nListen {}\nAllow 127.0.0.0/8\nMaxClients 200\nTimeout 60\nLogLevel Critical\n",
            addr.port(),
            addr.ip()
        );
        let conf_path = dir.path().join("tinyproxy.conf");
        write_file(&conf_path, conf, 0o644);
        let mut cmd = Command::new("tinyproxy");
        cmd.arg("-d").arg("-c").arg(&conf_path);
        let mut child = Child::spawn("tinyproxy", cmd, dir.path());
        wait_started(&mut child, addr, "tinyproxy");
        TinyAt {
            child,
            addr,
            _dir: dir,
        }
    }
}

/// A port free on 127.0.0.1 and on every address in `ips` (checked by
/// binding each), for several proxies sharing one port.
pub fn port_free_on(ips: &[[u8; 4]]) -> u16 {
    for _ in 0..50 {
        let p = free_port();
        if ips
            .iter()
            .all(|ip| TcpListener::bind(SocketAddr::from((*ip, p))).is_ok())
        {
            return p;
        }
    }
    panic!("no port free on all of {ips:?}");
}
