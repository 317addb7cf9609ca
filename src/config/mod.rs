//! Configuration: the file schema, loading and validation, and the proxy
//! environment with Go's semantics.

pub mod adaptive;
pub mod duration;
pub mod env;
pub mod load;
pub mod locate;
pub mod noproxy;
pub mod overrides;
pub mod redact;
pub mod schema;
pub mod security;
pub mod windows;

pub use load::{Admission, Applies, Config, ConfigError, Listener, UpstreamEntry};
