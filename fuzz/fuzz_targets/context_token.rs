//! A context token's bytes, as a client sends them with a write.
#![no_main]
use chorus_core::ContextToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(context) = ContextToken::decode(bytes, "c", "k") {
        let again = ContextToken::encode(&context, "c", "k");
        assert_eq!(ContextToken::decode(&again, "c", "k").unwrap(), context);
    }
});
