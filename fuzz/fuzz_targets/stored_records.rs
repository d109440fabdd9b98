//! Stored records (op-log entries, key states, conflict records, node meta), as a
//! node reads them from a damaged disk.
#![no_main]
use chorus_store::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(entry) = codec::decode_entry("oplog", bytes) {
        assert_eq!(codec::decode_entry("oplog", &codec::encode_entry(&entry)).unwrap(), entry);
    }
    if let Ok(state) = codec::decode_key_state(bytes) {
        assert_eq!(codec::decode_key_state(&codec::encode_key_state(&state)).unwrap(), state);
    }
    if let Ok(record) = codec::decode_conflict(bytes) {
        assert_eq!(codec::decode_conflict(&codec::encode_conflict(&record)).unwrap(), record);
    }
    let _ = codec::decode_meta(bytes);
});
