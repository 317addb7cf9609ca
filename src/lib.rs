//! proxyguard: a resilient local proxy gateway, a proxy-path doctor and an
//! Alibaba Cloud request signer. The library exposes the same connection
//! path, pool and resilience pieces the binary uses.

pub mod signer;
