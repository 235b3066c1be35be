//! `Authorization` header values: any text gives a key or none, never a panic; a key is never
//! empty nor padded with white space.
#![no_main]

use flowhouse_keys::key_from_authorization;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(key) = key_from_authorization(Some(header)) {
        assert!(!key.is_empty());
        assert_eq!(key.trim(), key);
    }
});
