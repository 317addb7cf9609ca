//! Child processes (killed with their group on drop), commands with a deadline, curl.

use super::*;

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
    /// From a thread inside a test namespace it runs inside ([`super::netns`]).
    pub fn spawn(name: &str, cmd: Command, dir: &Path) -> Child {
        let mut cmd = super::netns::wrap(cmd);
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
/// From a thread inside a test namespace it runs inside ([`super::netns`]).
pub fn run_cmd(cmd: Command, timeout: Duration) -> CmdOut {
    let mut cmd = super::netns::wrap(cmd);
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
