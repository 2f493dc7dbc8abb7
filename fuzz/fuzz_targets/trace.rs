//! Workload traces (SWF and CSV): parse or refuse, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = domain::trace::parse_swf(text);
    let _ = domain::trace::parse_csv(text);
});
