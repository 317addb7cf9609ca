//! proxyguard: a resilient local proxy gateway, a proxy-path doctor and an
//! Alibaba Cloud request signer. The library exposes the same connection
//! path, pool and resilience pieces the binary uses.
//!
//! Flow of one client connection:
//! `inbound` (accept → admission → http | socks5) → `route` (bypass or pool)
//! → `upstream` connectors (one per scheme, typed `ConnectError`) → `relay`.

pub mod acl;
pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod events;
pub mod fleet;
pub mod forward;
pub mod http_client;
pub mod inbound;
pub mod logging;
pub mod pool;
#[doc(hidden)]
pub mod props;
pub mod relay;
pub mod reverse;
pub mod route;
pub mod server;
pub mod shutdown;
pub mod signer;
pub mod tcp_keepalive;
pub mod tls_acceptor;
pub mod upstream;
