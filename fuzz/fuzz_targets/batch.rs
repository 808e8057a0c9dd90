#![no_main]
// harness: bookrec::fuzzing::batch (src/fuzzing.rs)
libfuzzer_sys::fuzz_target!(|data: &[u8]| bookrec::fuzzing::batch(data));
