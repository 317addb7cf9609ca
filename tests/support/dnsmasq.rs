//! dnsmasq's command line, written once: a resolver on `127.0.0.1:PORT`
//! with no upstream server (`--no-resolv`), no `/etc/hosts` and no config
//! file, so it answers only from the records a test gives it and nothing
//! leaves the machine. Used by `netns::NsDns`, `discovery_peers::HostsDns`
//! and `doctor_peers::Dnsmasq`, which add their records and faults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{wait_started, Child};

/// A dnsmasq command line: the fixed base plus what a test adds. `dir`
/// holds the pid file and is the child's log directory.
pub struct Builder {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Builder {
    /// dnsmasq in the foreground (`-k`) on `127.0.0.1:port` only, running
    /// as root (so a hosts file in a private temp dir stays readable).
    pub fn new(port: u16, dir: &Path) -> Builder {
        Builder {
            port,
            dir: dir.to_path_buf(),
            extra: Vec::new(),
        }
    }

    /// A hosts file of A/AAAA records (`--addn-hosts`), re-read on SIGHUP.
    pub fn addn_hosts(mut self, path: &Path) -> Builder {
        self.extra.push(format!("--addn-hosts={}", path.display()));
        self
    }

    /// Authoritative for `.test` (`--local=/test/`): a name under `.test`
    /// it does not hold gets NXDOMAIN (else REFUSED: there is no upstream).
    pub fn local_test(mut self) -> Builder {
        self.extra.push("--local=/test/".to_string());
        self
    }

    /// TTL of the records it answers from its hosts files (`--local-ttl`).
    pub fn local_ttl(mut self, secs: u32) -> Builder {
        self.extra.push(format!("--local-ttl={secs}"));
        self
    }

    /// One SRV record (`--srv-host`), e.g.
    /// `_proxy._tcp.egress.test,proxy-a.test,3128,0,10`.
    pub fn srv_host(mut self, srv: &str) -> Builder {
        self.extra.push(format!("--srv-host={srv}"));
        self
    }

    /// `name` and every name below it resolve to `ip` (`--address`).
    pub fn address(mut self, name: &str, ip: &str) -> Builder {
        self.extra.push(format!("--address=/{name}/{ip}"));
        self
    }

    /// The address it listens on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The command line, base arguments first.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "-k",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "-C",
            "/dev/null",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--user=root",
        ])
        .arg(format!("--port={}", self.port))
        .arg(format!(
            "--pid-file={}",
            self.dir.join("dnsmasq.pid").display()
        ))
        .args(&self.extra);
        cmd
    }

    /// Starts it and waits (bounded) until it serves: dnsmasq also listens
    /// on TCP on the same port, so a TCP connect proves it is up.
    pub fn spawn(&self) -> Child {
        let mut child = Child::spawn("dnsmasq", self.command(), &self.dir);
        wait_started(&mut child, self.addr(), "dnsmasq");
        child
    }
}
