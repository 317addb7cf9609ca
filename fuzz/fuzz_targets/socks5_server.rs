#![no_main]
//! See proxyguard::props::socks5_server for the property checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxyguard::props::socks5_server(data));
