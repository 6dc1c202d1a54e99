#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanspread_fuzz::catalog_text(data));
