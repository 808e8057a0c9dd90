#![no_main]
// harness: bookrec::fuzzing::event (src/fuzzing.rs)
libfuzzer_sys::fuzz_target!(|data: &[u8]| bookrec::fuzzing::event(data));
