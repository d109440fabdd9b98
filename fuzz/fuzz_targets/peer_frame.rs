//! A peer frame's bytes, as a node reads them off its peer port.
#![no_main]
use chorus_repl::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(frame) = Frame::decode(bytes) {
        assert_eq!(Frame::decode(&frame.encode()).unwrap(), frame);
    }
});
