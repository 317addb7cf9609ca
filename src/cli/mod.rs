//! Pieces of the `proxyguard` command line that are worth testing on their
//! own: address arguments, the admin API client behind `status` and
//! `reload`, the `env` lines and the `status` table.

pub mod addr;
pub mod admin_client;
pub mod env_lines;
pub mod status_table;
