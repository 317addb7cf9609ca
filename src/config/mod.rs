//! Proxy configuration sources: environment variables, `NO_PROXY` and the
//! Windows Internet Settings.

pub mod env;
pub mod noproxy;
pub mod redact;
pub mod windows;
