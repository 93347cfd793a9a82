//! Fuzz target: `msstore_facade::fuzzing::store_key` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msstore_facade::fuzzing::store_key(data));
