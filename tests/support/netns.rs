//! Network namespaces for tests that resolve names: a namespace with only
//! `lo`, its own `resolv.conf` (default: `nameserver 127.0.0.1`) and `hosts`,
//! so no lookup can leave the machine (the system resolver is not on
//! loopback) and a test decides what every name resolves to.
//!
//! - [`Netns::command`] runs one program inside (`ip netns exec NAME prog`:
//!   the namespace's network, and `/etc/netns/NAME/*` mounted over `/etc`).
//! - [`Netns::enter`] moves the calling thread into the namespace (setns):
//!   its own sockets (free ports, `wait_port`, raw clients) and the threads it
//!   starts live there, and every process started through this harness
//!   ([`Child::spawn`], [`run_cmd`], so every peer helper, `curl`, `hey` and
//!   proxyguard) from such a thread is wrapped in `ip netns exec NAME`.
//! - [`NsDns`]: dnsmasq on the namespace's `127.0.0.1:53`, the resolver its
//!   `resolv.conf` names, answering from a hosts file that can change.
//!
//! Names are unique per test process and namespace (tests run in parallel
//! threads). Drop kills whatever still runs inside, deletes the namespace
//! and its `/etc/netns` directory. Needs root and iproute2.

use super::*;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// Our namespaces by (st_dev, st_ino) of their nsfs file, for [`wrap`].
static REGISTRY: Mutex<Option<HashMap<(u64, u64), String>>> = Mutex::new(None);

fn registry() -> std::sync::MutexGuard<'static, Option<HashMap<(u64, u64), String>>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn ns_id(path: &str) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The name of our namespace the calling thread is in, if any.
pub fn current() -> Option<String> {
    let id = ns_id("/proc/thread-self/ns/net")?;
    registry().as_ref()?.get(&id).cloned()
}

/// `cmd` unchanged, or, when the calling thread is inside one of our
/// namespaces, the same command under `ip netns exec NAME` (so it also gets
/// the namespace's `resolv.conf` and `hosts`). Keeps args, env changes and
/// the working directory.
pub fn wrap(cmd: Command) -> Command {
    let Some(name) = current() else {
        return cmd;
    };
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &name])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

/// The default hosts file inside: loopback names only.
pub const LOOPBACK_HOSTS: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n";

/// A network namespace with only `lo` (up).
pub struct Netns {
    name: String,
    etc: PathBuf,
}

impl Netns {
    /// `resolv.conf`: `nameserver 127.0.0.1`, one try of one second (nothing
    /// listens there unless the test starts [`NsDns`]); `hosts`: loopback only.
    pub fn new() -> Netns {
        Netns::with(
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            LOOPBACK_HOSTS,
        )
    }

    /// A namespace with this `resolv.conf` and `hosts` text.
    pub fn with(resolv_conf: &str, hosts: &str) -> Netns {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        assert!(is_root(), "network namespaces need root");
        let name = format!(
            "pgt{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let etc = PathBuf::from(format!("/etc/netns/{name}"));
        fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("mkdir {}: {e}", etc.display()));
        let ns = Netns { name, etc };
        ns.set_resolv_conf(resolv_conf);
        ns.set_hosts(hosts);
        let ip = |args: &[&str]| {
            let mut c = Command::new("ip");
            c.args(args);
            run_cmd(c, Duration::from_secs(20))
        };
        let out = ip(&["netns", "add", &ns.name]);
        assert_eq!(out.code, 0, "ip netns add {} failed: {out:?}", ns.name);
        let out = ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        assert_eq!(out.code, 0, "lo up in {}: {out:?}", ns.name);
        let id = ns_id(&format!("/var/run/netns/{}", ns.name)).expect("netns file");
        registry()
            .get_or_insert_with(HashMap::new)
            .insert(id, ns.name.clone());
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Rewrites `resolv.conf`; processes started afterwards see it.
    pub fn set_resolv_conf(&self, text: &str) {
        write_file(&self.etc.join("resolv.conf"), text, 0o644);
    }

    /// Rewrites `hosts`; processes started afterwards see it.
    pub fn set_hosts(&self, text: &str) {
        write_file(&self.etc.join("hosts"), text, 0o644);
    }

    /// `ip netns exec NAME prog`, proxy env vars removed.
    pub fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        for v in PROXY_ENV_VARS {
            c.env_remove(v);
        }
        c
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> Inside {
        let open = |p: &str| {
            fs::File::open(p)
                .map(OwnedFd::from)
                .unwrap_or_else(|e| panic!("open {p}: {e}"))
        };
        let back = open("/proc/thread-self/ns/net");
        let target = open(&format!("/var/run/netns/{}", self.name));
        // SAFETY: setns on fds we own; CLONE_NEWNET only changes this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        Inside {
            back,
            _not_send: PhantomData,
        }
    }

    /// Pids of processes inside (not counting this test process).
    pub fn pids(&self) -> Vec<i32> {
        let mut c = Command::new("ip");
        c.args(["netns", "pids", &self.name]);
        let me = std::process::id() as i32;
        run_cmd(c, Duration::from_secs(10))
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != me)
            .collect()
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: kill(2) on a process inside the namespace this test made.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if let Some(id) = ns_id(&format!("/var/run/netns/{}", self.name)) {
            if let Some(r) = registry().as_mut() {
                r.remove(&id);
            }
        }
        let mut c = Command::new("ip");
        c.args(["netns", "del", &self.name]);
        let _ = run_cmd(c, Duration::from_secs(10));
        let _ = fs::remove_dir_all(&self.etc);
    }
}

/// The calling thread is inside a namespace; drop moves it back.
pub struct Inside {
    back: OwnedFd,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Inside {
    fn drop(&mut self) {
        // SAFETY: setns back to the namespace this thread came from.
        unsafe {
            libc::setns(self.back.as_raw_fd(), libc::CLONE_NEWNET);
        }
    }
}

/// dnsmasq on the namespace's `127.0.0.1:53`: answers names from a hosts
/// file (re-read on [`NsDns::set_hosts`]); any other name under `.test` gets
/// NXDOMAIN (`--local=/test/`), any other name REFUSED (no upstream server).
/// Start it from a thread inside the namespace ([`Netns::enter`]).
pub struct NsDns {
    pub child: Child,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl NsDns {
    /// `hosts`: hosts-file lines such as `127.0.0.1 proxy-a.test`.
    pub fn start(hosts: &str) -> NsDns {
        assert!(
            current().is_some(),
            "NsDns::start outside a test namespace would take the host's port 53"
        );
        let dir = temp_dir("nsdns", true);
        let hosts_path = dir.path().join("hosts");
        write_file(&hosts_path, hosts, 0o644);
        let child = dnsmasq::Builder::new(53, dir.path())
            .local_test()
            .addn_hosts(&hosts_path)
            .spawn();
        NsDns {
            child,
            hosts: hosts_path,
            _dir: dir,
        }
    }

    /// Replaces the records and makes dnsmasq re-read them (SIGHUP); waits
    /// until a lookup of `probe` gives `resolves` (bounded).
    pub fn set_hosts(&self, hosts: &str, probe: &str, resolves: bool) {
        write_file(&self.hosts, hosts, 0o644);
        self.child.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(10), || lookup(probe) == resolves),
            "dnsmasq did not pick up the new hosts ({probe} should resolve: {resolves})"
        );
    }

    /// SIGSTOP: queries are received and never answered (lookups time out).
    pub fn freeze(&self) {
        self.child.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`NsDns::freeze`].
    pub fn thaw(&self) {
        self.child.signal(libc::SIGCONT);
    }

    /// Kills it: queries to port 53 are refused (ICMP port unreachable).
    pub fn kill(&mut self) {
        self.child.signal(libc::SIGCONT);
        self.child.kill9();
    }
}

/// Whether `name` resolves through the namespace's resolver (`getent hosts`,
/// run inside; call from a thread inside the namespace).
pub fn lookup(name: &str) -> bool {
    assert!(current().is_some(), "lookup() outside a test namespace");
    let mut c = Command::new("getent");
    c.args(["hosts", name]);
    run_cmd(c, Duration::from_secs(15)).code == 0
}

impl Drop for NsDns {
    fn drop(&mut self) {
        // A frozen dnsmasq would sit out SIGTERM's grace period.
        self.thaw();
    }
}
