//! Fuzz target: `msstore_facade::fuzzing::retry_after` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msstore_facade::fuzzing::retry_after(data));
