//! Fuzz target: `msstore_facade::fuzzing::ms_cv` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msstore_facade::fuzzing::ms_cv(data));
