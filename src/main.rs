//! The `proxyguard` command line: parse, call the library, map errors to
//! exit codes (0 ok, 1 failure, 2 usage or configuration error). Every error
//! is printed once, on standard error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, Parser, Subcommand};
use proxyguard::cli::addr::{self, AdminArg};
use proxyguard::cli::{admin_client, env_lines, status_table};
use proxyguard::config::env::ProxyEnv;
use proxyguard::config::Config;
use proxyguard::logging::{self, ColorChoice, LogFormat, LogOptions};

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PROXYGUARD_COMMIT"),
    ", built ",
    env!("PROXYGUARD_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "proxyguard",
    version = VERSION,
    about = "Resilient proxy gateway, proxy-path doctor and API signer"
)]
struct Cli {
    /// Colour in logs and reports: auto (only on a terminal, NO_COLOR honoured), always, never
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        value_name = "WHEN"
    )]
    color: ColorChoice,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Shells `completions` can write for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the local proxy gateway.
    Serve {
        /// Configuration file (TOML). Without it: defaults plus the proxy environment.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Listen address, repeatable: IP:PORT, or :PORT for 127.0.0.1:PORT (loopback). Replaces configured listeners; protocol `mixed`.
        #[arg(long, value_name = "ADDR", value_parser = addr::parse_socket)]
        listen: Vec<SocketAddr>,
        /// Admin API address (IP:PORT or :PORT), or `off`. Given here it must bind; the default (127.0.0.1:9090) only warns when busy.
        #[arg(long, value_name = "ADDR|off", value_parser = addr::parse_admin_arg)]
        admin: Option<AdminArg>,
        /// Log format: human lines or JSON objects (fields in docs/logging.md).
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
        /// Log filter: error, warn, info, debug, trace, or RUST_LOG syntax. Default: RUST_LOG, else info.
        #[arg(long, value_name = "LEVEL", conflicts_with_all = ["verbose", "quiet"])]
        log_level: Option<String>,
        /// More log detail: -v debug, -vv trace.
        #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
        verbose: u8,
        /// Less log detail: -q warnings and errors, -qq errors only.
        #[arg(short, long, action = ArgAction::Count)]
        quiet: u8,
    },
    /// Walk the real proxy path to URL, time every phase, name the root cause and the fix.
    Doctor(Box<proxyguard::doctor::cli::DoctorArgs>),
    /// Show the live state of a running gateway (reads its admin API). Exit 1 when nothing can serve.
    Status {
        /// Admin API address: host:port, :PORT or http://host:port. Default 127.0.0.1:9090.
        #[arg(long, conflicts_with = "config", value_name = "ADDR")]
        admin: Option<String>,
        /// Take the admin address (and token) from this config.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running gateway to re-read its configuration (POST /reload with the admin token).
    Reload {
        /// Admin API address: host:port, :PORT or http://host:port. Default 127.0.0.1:9090.
        #[arg(long, conflicts_with = "config", value_name = "ADDR")]
        admin: Option<String>,
        /// Take the admin address and token from this config.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the environment lines that point applications at the gateway.
    Env {
        /// The gateway's configuration (its listeners). Without it: the defaults.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Syntax of the lines.
        #[arg(long, value_enum, default_value = "sh")]
        shell: env_lines::Shell,
    },
    /// Sign an Alibaba Cloud request (API Gateway X-Ca-*, OpenAPI RPC or ACS3).
    Sign(Box<proxyguard::signer::cli::SignArgs>),
    /// Validate a configuration and print the effective one (secrets redacted).
    Check {
        /// Configuration file (TOML). Without it: defaults plus the proxy environment.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `proxyguard completions bash > /etc/bash_completion.d/proxyguard`).
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the manual page (roff) to standard output.
    Manpage,
}

fn load(config: Option<&PathBuf>) -> Result<Config, proxyguard::config::ConfigError> {
    match config {
        Some(p) => Config::from_file(p),
        None => Config::from_env(&ProxyEnv::from_process_env()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.color == ColorChoice::Never {
        // Reports that decide colour themselves honour NO_COLOR.
        std::env::set_var("NO_COLOR", "1");
    }
    match cli.cmd {
        Cmd::Serve {
            config,
            listen,
            admin,
            log_format,
            log_level,
            verbose,
            quiet,
        } => {
            let level = log_level.or(match (verbose, quiet) {
                (0, 0) => None,
                (1, _) => Some("debug".into()),
                (v, _) if v > 1 => Some("trace".into()),
                (_, 1) => Some("warn".into()),
                _ => Some("error".into()),
            });
            let opts = LogOptions {
                format: log_format,
                level,
                color: cli.color,
            };
            serve(config, &listen, admin, &opts)
        }
        Cmd::Doctor(args) => proxyguard::doctor::cli::run(*args),
        Cmd::Status {
            admin,
            config,
            json,
        } => status(admin, config, json),
        Cmd::Reload { admin, config } => reload(admin, config),
        Cmd::Env { config, shell } => env(config, shell),
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
        Cmd::Completions { shell } => {
            use clap_complete::Shell;
            let sh = match shell {
                CompletionShell::Bash => Shell::Bash,
                CompletionShell::Zsh => Shell::Zsh,
                CompletionShell::Fish => Shell::Fish,
                CompletionShell::Powershell => Shell::PowerShell,
            };
            let mut out = Vec::new();
            clap_complete::generate(sh, &mut Cli::command(), "proxyguard", &mut out);
            print_bytes(&out)
        }
        Cmd::Manpage => {
            let man = clap_mangen::Man::new(Cli::command());
            let mut out = Vec::new();
            match man.render(&mut out) {
                Ok(()) => print_bytes(&out),
                Err(e) => {
                    eprintln!("proxyguard manpage: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Writes generated text to stdout; a closed pipe (`| head`) is not an error.
fn print_bytes(b: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(b).and_then(|()| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("proxyguard: cannot write: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

fn serve(
    config: Option<PathBuf>,
    listen: &[SocketAddr],
    admin: Option<AdminArg>,
    opts: &LogOptions,
) -> ExitCode {
    if let Err(e) = logging::init(opts) {
        eprintln!("proxyguard: {e}");
        return ExitCode::from(2);
    }
    let mut cfg = match load(config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("proxyguard: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if !listen.is_empty() {
        if let Err(e) = cfg.set_listeners(listen) {
            eprintln!("proxyguard: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(a) = admin {
        let a = match a {
            AdminArg::Off => None,
            AdminArg::At(a) => Some(a),
        };
        if let Err(e) = cfg.set_admin(a) {
            eprintln!("proxyguard: {e}");
            return ExitCode::from(2);
        }
    }
    let ignored = cfg.ignored_proxy_vars(|v| std::env::var(v).ok());
    if !ignored.is_empty() {
        tracing::warn!(
            variables = %ignored.join(","),
            "{} has no [[upstream]], so it connects directly although {} set; add [[upstream]] entries or `[pool] upstreams_from_env = true` to use them",
            cfg.source_name,
            if ignored.len() == 1 { format!("{} is", ignored[0]) } else { format!("{} are", ignored.join(", ")) }
        );
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
            eprintln!("proxyguard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The admin base URL and token for `status`/`reload`: `--admin` (token from
/// PROXYGUARD_ADMIN_TOKEN), a config's [admin], or 127.0.0.1:9090.
fn admin_target(
    cmd: &str,
    admin: Option<String>,
    config: Option<PathBuf>,
) -> Result<(url::Url, Option<String>), ExitCode> {
    let env_token = std::env::var("PROXYGUARD_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let text = match (admin, config) {
        (Some(a), _) => a,
        (None, Some(p)) => match Config::from_file(&p) {
            Ok(c) => match c.admin_addr {
                Some(a) => {
                    let token = env_token.or(c.admin_token.clone());
                    return addr::admin_base(&a.to_string())
                        .map(|u| (u, token))
                        .map_err(|e| {
                            eprintln!("proxyguard {cmd}: {e}");
                            ExitCode::from(2)
                        });
                }
                None => {
                    eprintln!(
                        "proxyguard {cmd}: the admin API is disabled in {}",
                        p.display()
                    );
                    return Err(ExitCode::from(2));
                }
            },
            Err(e) => {
                eprintln!("proxyguard {cmd}: configuration error: {e}");
                return Err(ExitCode::from(2));
            }
        },
        (None, None) => "127.0.0.1:9090".to_string(),
    };
    match addr::admin_base(&text) {
        Ok(u) => Ok((u, env_token)),
        Err(e) => {
            eprintln!("proxyguard {cmd}: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn status(admin: Option<String>, config: Option<PathBuf>, json: bool) -> ExitCode {
    let (base, token) = match admin_target("status", admin, config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let answer =
        match admin_client::request_blocking(&base, http::Method::GET, "/status", token.as_deref())
        {
            Ok(a) if a.status == 200 => a,
            Ok(a) => {
                eprintln!(
                    "proxyguard status: {base} answered {}: {}",
                    a.status,
                    a.body.trim()
                );
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("proxyguard status: {e}");
                return ExitCode::from(2);
            }
        };
    let v: serde_json::Value = match serde_json::from_str(&answer.body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("proxyguard status: {base} did not answer with a status document: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", answer.body);
    } else {
        print!("{}", status_table::render(&v));
    }
    if v["can_serve"].as_bool().unwrap_or(false) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn reload(admin: Option<String>, config: Option<PathBuf>) -> ExitCode {
    let (base, token) = match admin_target("reload", admin, config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if token.is_none() {
        eprintln!("proxyguard reload: no admin token: set PROXYGUARD_ADMIN_TOKEN, or give --config with [admin] token_env");
        return ExitCode::from(2);
    }
    match admin_client::request_blocking(&base, http::Method::POST, "/reload", token.as_deref()) {
        Ok(a) if a.status == 200 => {
            println!("proxyguard reload: {}", a.body.trim());
            ExitCode::SUCCESS
        }
        Ok(a) => {
            eprintln!("proxyguard reload: {} ({})", a.body.trim(), a.status);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("proxyguard reload: {e}");
            ExitCode::from(2)
        }
    }
}

fn env(config: Option<PathBuf>, shell: env_lines::Shell) -> ExitCode {
    let cfg = match load(config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("proxyguard env: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let listeners: Vec<_> = cfg.listeners.iter().map(|l| (l.addr, l.protocol)).collect();
    print!(
        "{}",
        env_lines::render(&env_lines::variables(&listeners), shell)
    );
    ExitCode::SUCCESS
}
