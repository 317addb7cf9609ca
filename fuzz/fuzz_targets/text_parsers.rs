#![no_main]
//! See proxyguard::props::text_parsers for the property checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxyguard::props::text_parsers(data));
