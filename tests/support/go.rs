//! The Go net/http test client (tests/go/client).

use super::*;

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
    /// Pause between one worker's requests.
    pub interval: Duration,
    /// `-proxy`: one proxy for every target, loopback included (the
    /// environment's proxy skips loopback targets in Go).
    pub proxy_all: Option<String>,
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
            interval: Duration::ZERO,
            proxy_all: None,
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
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Every request through `url`, loopback targets included.
    pub fn proxy_all(mut self, url: &str) -> Self {
        self.proxy_all = Some(url.into());
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
            .arg(format!("-keepalive={}", opts.keepalive))
            .arg("-interval")
            .arg(format!("{}ms", opts.interval.as_millis()));
        if let Some(p) = &opts.proxy_all {
            cmd.arg("-proxy").arg(p);
        }
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
