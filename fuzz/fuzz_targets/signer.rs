#![no_main]
//! See proxyguard::props::signer for the property checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxyguard::props::signer(data));
