//! Configuration: the file schema, loading and validation, and the proxy
//! environment with Go's semantics.

pub mod adaptive;
pub mod discovery;
pub mod duration;
pub mod env;
pub mod fleet;
mod listen_tls;
pub mod load;
pub mod locate;
pub mod member;
pub mod noproxy;
pub mod overrides;
pub mod redact;
pub mod route_protocols;
pub mod schema;
mod sections;
pub mod security;
pub mod windows;
pub mod windows_env;

pub use load::{AdmissionSettings, Applies, Config, ConfigError, Listener, UpstreamEntry};
