//! Request bodies of the HTTP API: documents, CRDT operations, collection settings,
//! token rights.
#![no_main]
use chorus_core::NodeId;
use chorus_node::rights::Rights;
use chorus_node::{CollectionConfig, crdt_json, json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = json::check_document(bytes);
    let _ = crdt_json::parse_operations(bytes, |_| Some(NodeId(1)));
    if let Ok(config) = CollectionConfig::from_json(bytes) {
        assert_eq!(CollectionConfig::from_json(&config.to_json()).unwrap(), config);
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(rights) = Rights::parse(text)
    {
        assert_eq!(Rights::parse(&rights.to_string()).unwrap(), rights);
    }
});
