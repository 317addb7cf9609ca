//! proxyguard itself, started as a child process.

use super::*;

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

/// The `[admin] addr` of a config, when it names one and admin is enabled.
pub fn admin_addr(config_toml: &str) -> Option<SocketAddr> {
    let v: toml::Value = toml::from_str(config_toml).ok()?;
    let admin = v.get("admin")?;
    if admin.get("enabled").and_then(|e| e.as_bool()) == Some(false) {
        return None;
    }
    admin.get("addr")?.as_str()?.parse().ok()
}

impl Proxyguard {
    /// `serve --config FILE --log-format json`, proxy env cleared; waits for
    /// the first `[[listen]] addr` to accept, and for `[admin] addr` when the
    /// config names one (it is bound after the listeners).
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
        if let Some(a) = admin_addr(config_toml) {
            // A test of a busy admin port expects it not to come up: bounded.
            wait_port(a, Duration::from_secs(10));
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

/// `POST /reload` on the admin listener at `admin` with `token`.
pub fn admin_reload(admin: SocketAddr, token: &str) -> CurlOut {
    let auth = format!("Authorization: Bearer {token}");
    curl(&[
        "-s",
        "-X",
        "POST",
        "-H",
        &auth,
        &format!("http://{admin}/reload"),
    ])
}

/// `GET /status` on the admin listener at `admin`; panics with the answer
/// when it is not JSON.
pub fn admin_status(admin: SocketAddr) -> serde_json::Value {
    let r = curl(&["-s", &format!("http://{admin}/status")]);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("status JSON ({e}): {r:?}"))
}

/// Upstream `name`'s entry in `/status` at `admin`; panics with the status
/// when it lists no such upstream.
pub fn admin_upstream(admin: SocketAddr, name: &str) -> serde_json::Value {
    let v = admin_status(admin);
    v["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no upstream {name} in {v}"))
}
