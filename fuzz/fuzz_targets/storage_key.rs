//! Storage keys and paths: parse or refuse, never a panic; a key that parses builds back to
//! itself, and what a path check accepts never escapes its location.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = domain::storage::ObjectKey::parse(text) {
        assert_eq!(key.as_str(), text);
        assert!(!key.path().split('/').any(|p| p == ".."));
    }
    if domain::storage::check_path(text, true).is_ok() {
        assert!(!text.split('/').any(|p| p == ".." || p == "."));
    }
    let _ = domain::storage::check_content_type(text);
});
