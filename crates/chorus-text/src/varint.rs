//! LEB128 unsigned varints, shared by Chorus's byte formats (sequences here; context
//! tokens and CRDT states in `chorus-core`): small numbers (counters, lengths) take
//! one or two bytes.

pub fn write(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads one varint from the front of `input`; `None` when it is cut short or longer
/// than 64 bits.
pub fn read(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}
