#![no_main]
//! See proxyguard::props::config for the property checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxyguard::props::config(data));
