//! The `proxyguard` command line: parse, call the library, map errors to
//! exit codes (0 ok, 1 failure, 2 usage or configuration error).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proxyguard::config::env::ProxyEnv;
use proxyguard::config::Config;
use proxyguard::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "proxyguard",
    version,
    about = "Resilient proxy gateway, proxy-path doctor and API signer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the local proxy gateway.
    Serve {
        /// Configuration file (TOML). Without it: defaults plus the proxy environment.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address (repeatable); replaces configured listeners, protocol `mixed`.
        #[arg(long)]
        listen: Vec<SocketAddr>,
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
    },
    /// Walk the real proxy path to URL, time every phase, name the root cause and the fix.
    Doctor(Box<proxyguard::doctor::cli::DoctorArgs>),
    /// Show the live state of a running gateway (reads its admin API). Exit 1 when nothing can serve.
    Status {
        /// Admin API base URL.
        #[arg(long, conflicts_with = "config")]
        admin: Option<String>,
        /// Take the admin address (and token) from this config.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign an Alibaba Cloud request (API Gateway X-Ca-*, OpenAPI RPC or ACS3).
    Sign(Box<proxyguard::signer::cli::SignArgs>),
    /// Validate a configuration and print the effective one (secrets redacted).
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load(config: Option<&PathBuf>) -> Result<Config, proxyguard::config::ConfigError> {
    match config {
        Some(p) => Config::from_file(p),
        None => Config::from_env(&proxyguard::config::windows_env::serve_env(
            ProxyEnv::from_process_env(),
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            config,
            listen,
            log_format,
        } => {
            logging::init(log_format);
            let mut cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("proxyguard: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            if !listen.is_empty() {
                if let Err(e) = cfg.set_listeners(&listen) {
                    eprintln!("proxyguard: {e}");
                    return ExitCode::from(2);
                }
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("proxyguard: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let r = rt.block_on(proxyguard::server::run(cfg));
            logging::shutdown();
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("proxyguard: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Doctor(args) => proxyguard::doctor::cli::run(*args),
        Cmd::Status {
            admin,
            config,
            json,
        } => status(admin, config, json),
        Cmd::Sign(args) => match proxyguard::signer::cli::run(&args) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("proxyguard sign: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Check { config } => match load(config.as_ref()) {
            Ok(cfg) => {
                println!("# configuration OK ({})", cfg.source_name);
                print!("{}", cfg.effective_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("proxyguard: configuration error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn status(admin: Option<String>, config: Option<PathBuf>, json: bool) -> ExitCode {
    let (base, token) = match (admin, config) {
        (Some(a), _) => (a, std::env::var("PROXYGUARD_ADMIN_TOKEN").ok()),
        (None, Some(p)) => match Config::from_file(&p) {
            Ok(c) => match c.admin_addr {
                Some(a) => (format!("http://{a}"), c.admin_token.clone()),
                None => {
                    eprintln!(
                        "proxyguard status: the admin API is disabled in {}",
                        p.display()
                    );
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("proxyguard status: configuration error: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => (
            "http://127.0.0.1:9090".to_string(),
            std::env::var("PROXYGUARD_ADMIN_TOKEN").ok(),
        ),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxyguard status: {e}");
            return ExitCode::from(2);
        }
    };
    let body = match rt.block_on(fetch_status(&base, token.as_deref())) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("proxyguard status: cannot read {base}/status: {e}");
            return ExitCode::from(2);
        }
    };
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("proxyguard status: not a status document: {e}");
            return ExitCode::from(2);
        }
    };
    let can_serve = v["can_serve"].as_bool().unwrap_or(false);
    if json {
        println!("{body}");
    } else {
        println!(
            "proxyguard {} · up {}s · {} · {}",
            v["version"].as_str().unwrap_or("?"),
            v["uptime_s"],
            v["strategy"].as_str().unwrap_or("?"),
            if can_serve { "serving" } else { "CANNOT SERVE" }
        );
        println!(
            "{:<16} {:<13} {:<10} {:>9} {:>8} {:>8}  last error",
            "upstream", "state", "breaker", "latency", "ok", "failed"
        );
        for u in v["upstreams"].as_array().cloned().unwrap_or_default() {
            let lat = u["ewma_ms"]
                .as_f64()
                .map(|x| format!("{x:.1}ms"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<16} {:<13} {:<10} {:>9} {:>8} {:>8}  {}",
                u["name"].as_str().unwrap_or("?"),
                u["state"].as_str().unwrap_or("?"),
                u["breaker"].as_str().unwrap_or("?"),
                lat,
                u["successes"].as_u64().unwrap_or(0),
                u["failures"].as_u64().unwrap_or(0),
                u["last_error"]["message"].as_str().unwrap_or("")
            );
        }
    }
    if can_serve {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn fetch_status(base: &str, token: Option<&str>) -> Result<String, String> {
    use http_body_util::{BodyExt, Empty};
    let u = url::Url::parse(base).map_err(|e| e.to_string())?;
    let host = u.host_str().ok_or("no host")?.to_string();
    let port = u.port_or_known_default().unwrap_or(80);
    let fut = async {
        let s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut tx, c) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(
            hyper_util::rt::TokioIo::new(s),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = c.await;
        });
        let mut req = http::Request::get(format!("{}/status", u.path().trim_end_matches('/')))
            .header(http::header::HOST, format!("{host}:{port}"));
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = tx
            .send_request(req.body(Empty::new()).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("admin API answered {}", resp.status()));
        }
        let b = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(String::from_utf8_lossy(&b).into_owned())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}
