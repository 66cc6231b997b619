//! A caller's bearer token: nothing the fuzzer makes verifies, and nothing panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|token: &str| tokenvend_server::fuzzing::caller_token(token));
