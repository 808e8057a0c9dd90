#![no_main]
// harness: bookrec::fuzzing::query (src/fuzzing.rs)
libfuzzer_sys::fuzz_target!(|data: &[u8]| bookrec::fuzzing::query(data));
