//! The full fault grid (issue 10): every traffic row × every fault the
//! fault relay makes. A cell puts the relay in front of the FIRST upstream
//! (tinyproxy, microsocks or an echo backend), a healthy second upstream
//! behind it, runs the same requests through the gateway and, side by side,
//! with the client pointed straight at the faulty relay, and reports what
//! each client saw. The verdict (what is "right" per cell) lives in
//! tests/fault_grid.rs.

use std::collections::BTreeMap;

use super::faults::{Fault, FaultRelay};
use super::*;

/// Requests per cell (and per side-by-side run).
pub const N: usize = 40;
/// Concurrent client workers through the gateway.
pub const C: usize = 8;
/// Response body size: big enough for a cut mid-body.
pub const BODY: usize = 2048;
/// Where `CutMidBody` cuts: past any response head, inside the body.
pub const CUT_AT: usize = 1024;
/// Request body of the POST and chunked-PUT rows.
pub const UPLOAD: usize = 512;

/// Traffic rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    PlainKeep,
    PlainNew,
    PlainPost,
    ConnectFresh,
    ConnectKeep,
    Socks5,
    ReverseGet,
    ReversePut,
}

impl Row {
    pub const ALL: [Row; 8] = [
        Row::PlainKeep,
        Row::PlainNew,
        Row::PlainPost,
        Row::ConnectFresh,
        Row::ConnectKeep,
        Row::Socks5,
        Row::ReverseGet,
        Row::ReversePut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Row::PlainKeep => "plain GET keep-alive",
            Row::PlainNew => "plain GET new conn",
            Row::PlainPost => "plain POST (body)",
            Row::ConnectFresh => "CONNECT fresh",
            Row::ConnectKeep => "CONNECT keep-alive (Go)",
            Row::Socks5 => "SOCKS5",
            Row::ReverseGet => "reverse GET",
            Row::ReversePut => "reverse chunked PUT",
        }
    }

    pub fn is_reverse(self) -> bool {
        matches!(self, Row::ReverseGet | Row::ReversePut)
    }

    /// Tunnelled rows: the gateway never sees the response bytes.
    pub fn is_tunnel(self) -> bool {
        matches!(self, Row::ConnectFresh | Row::ConnectKeep | Row::Socks5)
    }
}

/// Fault columns the relay produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    /// No fault: the p99 every other cell compares with.
    Baseline,
    /// The first upstream is killed after a warm-up: its port is closed.
    Kill,
    HalfDead,
    AcceptClose,
    Reset,
    StallAfterHead,
    CutMidBody,
    Drip,
    Latency,
    Flapping,
}

impl Col {
    pub const ALL: [Col; 10] = [
        Col::Baseline,
        Col::Kill,
        Col::HalfDead,
        Col::AcceptClose,
        Col::Reset,
        Col::StallAfterHead,
        Col::CutMidBody,
        Col::Drip,
        Col::Latency,
        Col::Flapping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Col::Baseline => "none (baseline)",
            Col::Kill => "kill",
            Col::HalfDead => "half-dead",
            Col::AcceptClose => "accept+close",
            Col::Reset => "reset",
            Col::StallAfterHead => "stall after head",
            Col::CutMidBody => "cut mid-body",
            Col::Drip => "slow drip",
            Col::Latency => "+300 ms",
            Col::Flapping => "flapping",
        }
    }

    /// The relay's fault (`Kill` relays until the upstream is killed).
    pub fn fault(self, row: Row) -> Fault {
        match self {
            // A SOCKS5 upstream's replies (2-byte method, 10-byte IPv4
            // connect) pass; the stall follows the HTTP head in the tunnel.
            Col::StallAfterHead if row == Row::Socks5 => Fault::StallAfterHeadPast(12),
            Col::Baseline | Col::Kill => Fault::Pass,
            Col::HalfDead => Fault::Silent,
            Col::AcceptClose => Fault::AcceptClose,
            Col::Reset => Fault::Reset,
            Col::StallAfterHead => Fault::StallAfterHead,
            Col::CutMidBody => Fault::CutAfter(CUT_AT),
            // 2 KB/s: a ~2.3 KB answer takes about a second.
            Col::Drip => Fault::Drip(2048),
            Col::Latency => Fault::Latency(Duration::from_millis(300)),
            Col::Flapping => Fault::Flap(Duration::from_millis(700)),
        }
    }

    /// Faults that leave a client of the bare relay waiting for ever.
    fn hangs(self) -> bool {
        matches!(self, Col::HalfDead | Col::StallAfterHead)
    }
}

/// What one run of N requests saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub n: u64,
    /// 200 with the complete body.
    pub ok: u64,
    /// Answers other than 200, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Transport errors and truncated bodies, by message.
    pub errors: BTreeMap<String, u64>,
    pub p99_ms: f64,
}

impl Tally {
    pub fn failed(&self) -> u64 {
        self.n - self.ok
    }

    /// Failures that were a status (not a transport error or truncation).
    pub fn status_failures(&self) -> u64 {
        self.statuses.values().sum()
    }

    fn from_go(r: &GoResult, n: usize) -> Tally {
        let mut t = Tally {
            n: n as u64,
            ok: r.status(200),
            p99_ms: r.p99_ms,
            ..Default::default()
        };
        for (s, c) in &r.statuses {
            let code: u16 = s.parse().unwrap_or(0);
            if code != 200 {
                t.statuses.insert(code, *c);
            }
        }
        for (e, c) in &r.errors {
            *t.errors.entry(short_error(e)).or_default() += c;
        }
        t
    }

    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, c)| format!("{c}×{s}"))
            .collect();
        parts.extend(self.errors.iter().map(|(e, c)| format!("{c}×{e}")));
        parts.join(", ")
    }
}

/// The tail of a Go error without the URL (ports differ every run).
fn short_error(e: &str) -> String {
    let tail = e.rsplit(": ").next().unwrap_or(e);
    if e.contains("short body") {
        return "short body".into();
    }
    if e.contains("Client.Timeout") {
        return "client timeout".into();
    }
    tail.chars().take(60).collect()
}

/// One client run: the Go net/http client, or curl for the chunked PUT.
struct Client {
    url: String,
    proxy: Option<String>,
    keepalive: bool,
    post: bool,
    cafile: Option<PathBuf>,
    chunked_put: bool,
    /// Pause between one worker's requests.
    interval: Duration,
}

impl Client {
    fn run(&self, n: usize, c: usize, timeout: Duration) -> Tally {
        if self.chunked_put {
            return curl_puts(&self.url, n, c, timeout, self.interval);
        }
        let mut cmd = Command::new(GoClient::binary());
        for v in PROXY_ENV_VARS {
            cmd.env_remove(v);
        }
        cmd.args([
            "-url",
            &self.url,
            "-n",
            &n.to_string(),
            "-c",
            &c.to_string(),
        ])
        .arg("-timeout")
        .arg(format!("{}ms", timeout.as_millis()))
        .arg(format!("-keepalive={}", self.keepalive))
        .arg(format!("-interval={}ms", self.interval.as_millis()))
        .args(["-want-len", &BODY.to_string()]);
        if self.post {
            cmd.args(["-method", "POST", "-body", &UPLOAD.to_string()]);
        }
        if let Some(p) = &self.proxy {
            cmd.arg("-proxy").arg(p);
        }
        if let Some(ca) = &self.cafile {
            cmd.arg("-cafile").arg(ca);
        }
        let rounds = n.div_ceil(c.max(1)) as u32;
        let limit = (timeout + self.interval) * (rounds + 1) + Duration::from_secs(30);
        let out = run_cmd(cmd, limit);
        let line = out.stdout.lines().rev().find(|l| l.starts_with('{'));
        match line.map(serde_json::from_str::<GoResult>) {
            Some(Ok(r)) => Tally::from_go(&r, n),
            _ => panic!(
                "go client gave no JSON (exit {}, timed out {}):\n{}\n{}",
                out.code, out.timed_out, out.stdout, out.stderr
            ),
        }
    }
}

/// `n` chunked PUTs with curl from `c` threads (hey and Go's client send a
/// known length; curl sends `Transfer-Encoding: chunked` on request).
fn curl_puts(url: &str, n: usize, c: usize, timeout: Duration, interval: Duration) -> Tally {
    let results: Mutex<Vec<(f64, Result<(), String>)>> = Mutex::default();
    let payload = "p".repeat(UPLOAD);
    let max = timeout.as_secs().max(1).to_string();
    std::thread::scope(|s| {
        for w in 0..c {
            let (results, payload, max) = (&results, &payload, &max);
            s.spawn(move || {
                for i in (w..n).step_by(c) {
                    if i >= c {
                        std::thread::sleep(interval);
                    }
                    let t0 = Instant::now();
                    let r = curl(&[
                        "-m",
                        max,
                        "-X",
                        "PUT",
                        "-H",
                        "Transfer-Encoding: chunked",
                        "--data-binary",
                        payload,
                        url,
                    ]);
                    let verdict = if r.exit_code != 0 {
                        Err(format!("curl exit {}", r.exit_code))
                    } else if r.status != 200 {
                        Err(format!("status {}", r.status))
                    } else if r.body_len != BODY {
                        Err("short body".into())
                    } else {
                        Ok(())
                    };
                    let ms = t0.elapsed().as_secs_f64() * 1000.0;
                    results.lock().unwrap().push((ms, verdict));
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    let mut t = Tally {
        n: n as u64,
        ..Default::default()
    };
    let mut lat: Vec<f64> = results.iter().map(|r| r.0).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    t.p99_ms = lat
        .get((lat.len().saturating_sub(1) * 99) / 100)
        .copied()
        .unwrap_or(0.0);
    for (_, v) in results {
        match v {
            Ok(()) => t.ok += 1,
            Err(e) => match e.strip_prefix("status ").and_then(|s| s.parse().ok()) {
                Some(code) => *t.statuses.entry(code).or_default() += 1,
                None => *t.errors.entry(e).or_default() += 1,
            },
        }
    }
    t
}

/// What one cell saw.
pub struct Outcome {
    /// Through the gateway.
    pub via: Tally,
    /// The same requests straight at the faulty relay (side by side).
    pub direct: Tally,
    /// The healthy second upstream's state afterwards (must be `healthy`).
    pub healthy_state: String,
    pub logs: String,
}

/// The real peers behind the relay: the first is the faulty one.
enum Peers {
    Tiny(Vec<Tinyproxy>),
    Socks(Vec<Microsocks>),
    Echo(Vec<Option<EchoServer>>),
}

impl Peers {
    fn start(row: Row) -> Peers {
        match row {
            Row::Socks5 => Peers::Socks(vec![Microsocks::start(None), Microsocks::start(None)]),
            Row::ReverseGet | Row::ReversePut => {
                Peers::Echo(vec![Some(EchoServer::start()), Some(EchoServer::start())])
            }
            _ => Peers::Tiny(
                (0..2)
                    .map(|_| Tinyproxy::start(TinyOpts::default()))
                    .collect(),
            ),
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        match self {
            Peers::Tiny(t) => t[i].addr(),
            Peers::Socks(m) => m[i].addr(),
            Peers::Echo(e) => e[i].as_ref().map(|e| e.addr()).expect("echo alive"),
        }
    }

    fn scheme(&self) -> &'static str {
        match self {
            Peers::Socks(_) => "socks5",
            _ => "http",
        }
    }

    fn kill_first(&mut self) {
        match self {
            Peers::Tiny(t) => t[0].child.kill9(),
            Peers::Socks(m) => m[0].child.kill9(),
            Peers::Echo(e) => drop(e[0].take()),
        }
    }
}

const TOKEN: &str = "t0ken-t0ken-t0ken";

fn base_config(listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "bypass_loopback = false\n\n[[listen]]\naddr = \"{listen}\"\nprotocol = \"mixed\"\n\n\
         [admin]\naddr = \"{admin}\"\ntoken = \"{TOKEN}\"\n\n\
         [health]\ninterval = \"500ms\"\ntimeout = \"1s\"\n\n\
         [timeouts]\nresponse_head = \"3s\"\nbody_idle = \"1s\"\n\n"
    )
}

fn forward_config(listen: SocketAddr, admin: SocketAddr, ups: &[String]) -> String {
    let mut s = base_config(listen, admin);
    for (i, u) in ups.iter().enumerate() {
        s += &format!("[[upstream]]\nname = \"u{i}\"\nurl = \"{u}\"\npriority = {i}\n\n");
    }
    s
}

fn reverse_config(
    listen: SocketAddr,
    admin: SocketAddr,
    route: SocketAddr,
    bs: &[String],
) -> String {
    let mut s = base_config(listen, admin);
    s += &format!("[[route]]\nlisten = \"{route}\"\ntimeout = \"3s\"\n\n");
    for b in bs {
        s += &format!("[[route.backend]]\nurl = \"{b}\"\n\n");
    }
    s
}

/// The state of the healthy second upstream (or backend) in `/status`.
fn second_state(admin: SocketAddr, row: Row, second: SocketAddr) -> String {
    let r = curl(&["-s", &format!("http://{admin}/status")]);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    let members = if row.is_reverse() {
        v["routes"][0]["backends"].clone()
    } else {
        v["upstreams"].clone()
    };
    let want = second.to_string();
    members
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|m| m["url"].as_str().is_some_and(|u| u.contains(&want)))
        })
        .and_then(|m| m["state"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("missing in /status: {}", r.body))
}

/// Waits (bounded) until nothing accepts on `addr` any more.
fn wait_closed(addr: SocketAddr) {
    let closed = wait_until(Duration::from_secs(5), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    });
    assert!(closed, "{addr} still accepts after the kill");
}

/// Runs one cell: peers, relay, gateway, N requests through it, N straight
/// at the relay.
pub fn run_cell(row: Row, col: Col) -> Outcome {
    let nginx = Nginx::start_with(NginxOpts { big_bytes: BODY });
    let ca_file = nginx.ca().cert_path();
    let mut peers = Peers::start(row);
    let mut relay = Some(FaultRelay::start(peers.addr(0), col.fault(row)));
    let relay_addr = relay.as_ref().map(|r| r.addr).unwrap();
    let scheme = peers.scheme();
    let relay_url = format!("{scheme}://{relay_addr}");
    let second = peers.addr(1);
    let (listen, admin, route) = (free_addr(), free_addr(), free_addr());
    let members = [relay_url.clone(), format!("{scheme}://{second}")];
    let cfg = if row.is_reverse() {
        reverse_config(listen, admin, route, &members)
    } else {
        forward_config(listen, admin, &members)
    };
    let mut pg = Proxyguard::start(&cfg);
    if row.is_reverse() {
        pg.wait_listening(route);
    }
    // The client, through the gateway and straight at the relay.
    let (target, tls) = match row {
        Row::PlainPost | Row::ReverseGet | Row::ReversePut => (format!("/bytes/{BODY}"), false),
        Row::ConnectFresh | Row::ConnectKeep => ("/big".to_string(), true),
        _ => ("/big".to_string(), false),
    };
    // The echo server behind tinyproxy for POST; nginx for the rest.
    let post_origin = (row == Row::PlainPost).then(EchoServer::start);
    let origin = match (&post_origin, tls) {
        (Some(e), _) => e.url(),
        (None, true) => nginx.https_url(),
        (None, false) => nginx.url(),
    };
    // Flapping: spread the requests over more than one up/down phase.
    let (c, interval) = if col == Col::Flapping {
        (4, Duration::from_millis(100))
    } else {
        (C, Duration::ZERO)
    };
    let client = |via_gateway: bool| {
        let (url, proxy) = if row.is_reverse() {
            let at = if via_gateway { route } else { relay_addr };
            (format!("http://{at}{target}"), None)
        } else if via_gateway {
            let s = if row == Row::Socks5 { "socks5" } else { "http" };
            (format!("{origin}{target}"), Some(format!("{s}://{listen}")))
        } else {
            (format!("{origin}{target}"), Some(relay_url.clone()))
        };
        Client {
            url,
            proxy,
            keepalive: matches!(
                row,
                Row::PlainKeep | Row::PlainPost | Row::ConnectKeep | Row::ReverseGet
            ),
            post: row == Row::PlainPost,
            cafile: tls.then(|| ca_file.clone()),
            chunked_put: row == Row::ReversePut,
            interval,
        }
    };
    // A hang guard only, except where a stalled tunnel is failed by the
    // client's own timeout.
    let timeout = if col == Col::StallAfterHead {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(10)
    };
    if col == Col::Kill {
        // Warm up (pooled connections to the first upstream exist), then
        // kill it: its port is closed.
        let warm = client(true).run(C, C, timeout);
        let first = relay.as_ref().map_or(0, |r| r.accepted());
        assert!(
            warm.ok == C as u64 && first > 0,
            "{} × kill: the warm-up did not go through the first upstream ({first} accepted): {warm:?}",
            row.name()
        );
        peers.kill_first();
        drop(relay.take());
        wait_closed(relay_addr);
    }
    let via = client(true).run(N, c, timeout);
    let healthy_state = second_state(admin, row, second);
    let logs = pg.logs();
    drop(pg);
    // Side by side: the bare faulty upstream (all at once where it hangs).
    let direct_c = if col.hangs() { N } else { c };
    let direct = client(false).run(N, direct_c, Duration::from_secs(3));
    drop(relay);
    Outcome {
        via,
        direct,
        healthy_state,
        logs,
    }
}
