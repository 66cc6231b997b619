//! A token endpoint's answer: any status and body is a token or an error that does not
//! carry the request's secret, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenvend_server::fuzzing::token_response(data));
