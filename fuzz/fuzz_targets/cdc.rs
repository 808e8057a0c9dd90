#![no_main]
// harness: bookrec::fuzzing::cdc (src/fuzzing.rs)
libfuzzer_sys::fuzz_target!(|data: &[u8]| bookrec::fuzzing::cdc(data));
