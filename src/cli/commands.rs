//! The `status`, `reload` and `env` subcommands: each prints its result or
//! one error line and returns the exit code (0 ok, 1 failure, 2 usage,
//! configuration or connection error).

use std::path::PathBuf;
use std::process::ExitCode;

use super::{addr, admin_client, env_lines, status_table};
use crate::config::env::ProxyEnv;
use crate::config::Config;

fn load(config: Option<&PathBuf>) -> Result<Config, crate::config::ConfigError> {
    match config {
        Some(p) => Config::from_file(p),
        None => Config::from_env(&ProxyEnv::from_process_env()),
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

pub fn status(admin: Option<String>, config: Option<PathBuf>, json: bool) -> ExitCode {
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

pub fn reload(admin: Option<String>, config: Option<PathBuf>) -> ExitCode {
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

pub fn env(config: Option<PathBuf>, shell: env_lines::Shell) -> ExitCode {
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
