#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanspread_fuzz::control_json(data));
