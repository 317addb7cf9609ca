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
        None => Config::from_env(&ProxyEnv::from_process_env()),
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
            match rt.block_on(proxyguard::server::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("proxyguard: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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
