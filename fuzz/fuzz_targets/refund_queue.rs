//! Fuzz target: `msstore_facade::fuzzing::refund_queue` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msstore_facade::fuzzing::refund_queue(data));
