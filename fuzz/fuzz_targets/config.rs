//! The configuration parser: any text is an error or a valid configuration, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| tokenvend_server::fuzzing::config(text));
