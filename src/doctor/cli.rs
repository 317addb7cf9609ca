//! The `proxyguard doctor` command line: arguments, and the run that maps a
//! report to an exit code (0 ok, 1 a cause was found, 2 usage error).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::env::ProxyEnv;
use crate::config::Config;

use super::report;

/// Arguments of `proxyguard doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The URL to fetch. Without it (and with --config): check every upstream against [health] url.
    pub url: Option<String>,
    /// Proxy to test (http://, https://, socks5://, socks5h://, direct).
    #[arg(long, conflicts_with = "config")]
    pub proxy: Option<String>,
    /// Use the proxy choice of this proxyguard config instead of the environment.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Also resolve the target with this DNS server (IP[:port]) and compare.
    #[arg(long)]
    pub dns: Option<String>,
    /// Repeat the walk without the proxy and show both.
    #[arg(long)]
    pub compare_direct: bool,
    /// Deadline for each phase.
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    pub timeout: Duration,
    /// Extra CA certificates (PEM) to trust for the target's TLS.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for an https:// proxy's own TLS.
    #[arg(long)]
    pub proxy_cacert: Option<PathBuf>,
    /// Walk the path N times (intermittent faults): one line per run and a summary.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000), conflicts_with = "hold")]
    pub repeat: Option<u32>,
    /// Pause between the starts of two --repeat runs.
    #[arg(long, default_value = "1s", value_parser = parse_dur, requires = "repeat")]
    pub interval: Duration,
    /// Find an idle cut: hold idle connections and probe them at rising ages up to DURATION.
    #[arg(long, value_name = "DURATION", value_parser = parse_hold)]
    pub hold: Option<Duration>,
    /// Print one JSON object (schema in docs/doctor.md).
    #[arg(long)]
    pub json: bool,
}

/// Durations as everywhere in proxyguard: `300ms`, `5s`, `1m`, `1h30m`.
fn parse_dur(s: &str) -> Result<Duration, String> {
    crate::config::duration::parse(s).map_err(|e| e.to_string())
}

fn parse_hold(s: &str) -> Result<Duration, String> {
    let d = parse_dur(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
        return Err("--hold takes 1s to 24h".into());
    }
    Ok(d)
}

fn parse_dns(d: &str) -> Option<SocketAddr> {
    d.parse::<SocketAddr>().ok().or_else(|| {
        d.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// Runs `proxyguard doctor` and returns the exit code.
pub fn run(args: DoctorArgs) -> ExitCode {
    let cfg = match args.config.as_ref().map(|p| Config::from_file(p)) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            eprintln!("proxyguard doctor: configuration error: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let dns = match args.dns.as_deref().map(parse_dns) {
        Some(Some(a)) => Some(a),
        Some(None) => {
            eprintln!("proxyguard doctor: --dns expects IP or IP:port");
            return ExitCode::from(2);
        }
        None => None,
    };
    let base = super::Options {
        url: args.url.clone().unwrap_or_default(),
        proxy: args.proxy.clone(),
        upstream: None,
        config: cfg.clone(),
        dns,
        compare_direct: args.compare_direct,
        timeout: args.timeout,
        ca_file: args.cacert.clone(),
        proxy_ca_file: args.proxy_cacert.clone(),
        env: ProxyEnv::from_process_env(),
        windows: super::windows_settings(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxyguard doctor: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.url.is_none() {
        if args.repeat.is_some() || args.hold.is_some() {
            eprintln!("proxyguard doctor: --repeat and --hold need a URL");
            return ExitCode::from(2);
        }
        return every_upstream(&rt, base, cfg, args.json);
    }
    if let Some(n) = args.repeat {
        return repeat(&rt, &base, n as usize, args.interval, args.json);
    }
    if let Some(hold) = args.hold {
        return hold_run(&rt, &base, hold, args.json);
    }
    let colour = !args.json && report::use_colour();
    print_report(
        rt.block_on(super::run(&base)),
        args.json,
        |r| report::human(r, colour),
        |r| r.verdict.ok,
    )
}

/// Prints a mode's report (pretty JSON with `--json`, else `human`) and
/// exits 0 when the path works, 1 when it does not, 2 on a usage error.
fn print_report<R: serde::Serialize>(
    r: Result<R, super::DoctorError>,
    json: bool,
    human: impl FnOnce(&R) -> String,
    ok: impl FnOnce(&R) -> bool,
) -> ExitCode {
    match r {
        Ok(r) => {
            if json {
                println!("{}", report::json(&r));
            } else {
                print!("{}", human(&r));
            }
            exit(ok(&r))
        }
        Err(e) => {
            eprintln!("proxyguard doctor: {e}");
            ExitCode::from(2)
        }
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `--repeat N`: lines as runs end (human), one object at the end (JSON).
fn repeat(
    rt: &tokio::runtime::Runtime,
    base: &super::Options,
    n: usize,
    interval: Duration,
    json: bool,
) -> ExitCode {
    use std::io::Write;
    let r = rt.block_on(super::repeat::run(base, n, interval, |l| {
        if !json {
            println!("{}", super::repeat::human_line(l));
            let _ = std::io::stdout().flush();
        }
    }));
    print_report(r, json, super::repeat::human_summary, |r| r.ok)
}

/// `--hold DURATION`: the idle-cut timeline.
fn hold_run(
    rt: &tokio::runtime::Runtime,
    base: &super::Options,
    hold: Duration,
    json: bool,
) -> ExitCode {
    print_report(
        rt.block_on(super::hold::run(base, hold)),
        json,
        super::hold::human,
        |r| r.verdict.ok,
    )
}

/// Every configured upstream against the config's check URL.
fn every_upstream(
    rt: &tokio::runtime::Runtime,
    base: super::Options,
    cfg: Option<Config>,
    json: bool,
) -> ExitCode {
    let Some(cfg) = cfg else {
        eprintln!("proxyguard doctor: give a URL, or --config FILE to check every upstream");
        return ExitCode::from(2);
    };
    let Some(check) = cfg.health.url.clone() else {
        eprintln!("proxyguard doctor: --config without URL needs [health] url in the config");
        return ExitCode::from(2);
    };
    let mut all_ok = true;
    let mut rows = Vec::new();
    for u in &cfg.upstreams {
        let mut o = base.clone();
        o.url = check.clone();
        o.upstream = Some(u.spec.clone());
        match rt.block_on(super::run(&o)) {
            Ok(r) => {
                all_ok &= r.verdict.ok;
                rows.push((u.spec.name.clone(), r));
            }
            Err(e) => {
                eprintln!("proxyguard doctor: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, r)| serde_json::json!({"upstream": n, "report": r}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("{:<16} {:<40} cause", "upstream", "phases");
        for (n, r) in &rows {
            let phases: Vec<String> = r
                .steps
                .iter()
                .skip(1)
                .map(|s| {
                    format!(
                        "{}{}{:.0}ms",
                        s.name,
                        if s.ok { "✓" } else { "✗" },
                        s.duration_ms
                    )
                })
                .collect();
            println!(
                "{:<16} {:<40} {}",
                n,
                phases.join(" "),
                r.verdict.cause.unwrap_or("ok")
            );
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
