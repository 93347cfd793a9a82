//! Fuzz target: `msstore_facade::fuzzing::store_id` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msstore_facade::fuzzing::store_id(data));
