#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanspread_fuzz::wire_frame(data));
