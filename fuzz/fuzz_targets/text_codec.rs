//! Encoded texts (the sequence CRDT of text fields), as stores and transfers will
//! hold them: refused or decoded, never a panic; what decodes encodes to itself.
#![no_main]
use chorus_text::Text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = Text::decode(bytes) {
        let again = Text::decode(&text.encode()).unwrap();
        assert_eq!(again.to_string(), text.to_string());
    }
});
