//! Dollar amounts from users (strings and JSON number text): exact or refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(m) = domain::MicroUsd::parse_dollars(text) {
        assert_eq!(domain::MicroUsd::parse_dollars(&m.decimal()), Some(m));
    }
    if let Some(m) = domain::MicroUsd::parse_json_number(text) {
        assert_eq!(domain::MicroUsd::parse_json_number(&m.decimal()), Some(m));
    }
});
