#![no_main]
//! See proxyguard::props::upstream_replies for the property checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxyguard::props::upstream_replies(data));
