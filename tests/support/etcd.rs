//! A real etcd (Debian `etcd-server`) on loopback ports, for discovery and
//! fleet tests. Its data lives in a temp dir that survives `kill`/`restart`,
//! so a restarted etcd keeps its keys (the watch-resumes case).

use super::*;

pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut e = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir: temp_dir("etcd", false),
        };
        e.restart();
        e
    }

    /// `http://127.0.0.1:PORT`, the value for `endpoints = [...]`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// Kills etcd (SIGKILL): clients see connections refused until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill9();
        }
    }

    /// Starts (again) on the same ports and data dir; waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.args([
            "--name",
            "pg-test",
            "--data-dir",
            &self.dir.path().join("data").to_string_lossy(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("pg-test={peer}"),
            "--log-level",
            "warn",
        ]);
        let mut child = Child::spawn("etcd", cmd, self.dir.path());
        wait_started(&mut child, self.addr(), "etcd");
        self.child = Some(child);
        self.wait_healthy();
    }

    /// Puts `key` = `value` with etcdctl (v3 API).
    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value]);
    }

    pub fn delete(&self, key: &str) {
        self.ctl(&["del", key]);
    }

    /// `etcdctl get --prefix PREFIX` as printed (key and value lines).
    pub fn get_prefix(&self, prefix: &str) -> String {
        self.ctl(&["get", "--prefix", prefix])
    }

    fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args);
        let out = run_cmd(cmd, Duration::from_secs(20));
        assert!(
            out.code == 0,
            "etcdctl {args:?} failed: {}\n{}",
            out.stderr,
            self.log()
        );
        out.stdout
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + PEER_START_TIMEOUT;
        loop {
            let mut cmd = Command::new("etcdctl");
            cmd.env("ETCDCTL_API", "3").args([
                "--endpoints",
                &self.endpoint(),
                "endpoint",
                "health",
            ]);
            if run_cmd(cmd, Duration::from_secs(10)).code == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {PEER_START_TIMEOUT:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        self.child.as_ref().map(|c| c.log()).unwrap_or_default()
    }
}
