//! CRDT states and deltas, as they arrive inside replicated values.
#![no_main]
use chorus_node::crdt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(map) = crdt::decode_state(bytes) {
        assert_eq!(crdt::decode_state(&crdt::encode_state(&map)).unwrap(), map);
    }
    if let Ok(delta) = crdt::decode_delta(bytes) {
        assert_eq!(crdt::decode_delta(&crdt::encode_delta(&delta)).unwrap(), delta);
    }
});
