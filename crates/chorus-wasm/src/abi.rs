//! The C ABI `ui/text.js` calls. Replicas are named by handles (1, 2, …); strings
//! and bytes go in through memory the page asks for (`alloc`) and come out through
//! one result buffer (`result_ptr`, and the length a call answers). Negative
//! answers are refusals.

use crate::Replica;
use chorus_text::Id;
use std::cell::RefCell;

thread_local! {
    static REPLICAS: RefCell<Vec<Option<Replica>>> = const { RefCell::new(Vec::new()) };
    static RESULT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn with<T>(handle: u32, f: impl FnOnce(&mut Replica) -> T) -> Option<T> {
    REPLICAS.with(|r| {
        let mut replicas = r.borrow_mut();
        let slot = replicas.get_mut((handle as usize).checked_sub(1)?)?;
        slot.as_mut().map(f)
    })
}

fn answer(bytes: &[u8]) -> i32 {
    RESULT.with(|r| {
        let mut result = r.borrow_mut();
        result.clear();
        result.extend_from_slice(bytes);
        result.len() as i32
    })
}

/// # Safety
/// `ptr` and `len` name memory the page wrote through `alloc`.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller gives memory it wrote, `len` bytes long.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

#[unsafe(no_mangle)]
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    let mut buffer = Vec::<u8>::with_capacity(len.max(1));
    let ptr = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    ptr
}

/// # Safety
/// `ptr` came from `alloc(len)` and is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dealloc(ptr: *mut u8, len: usize) {
    // SAFETY: allocated by `alloc` with this capacity.
    drop(unsafe { Vec::from_raw_parts(ptr, 0, len.max(1)) });
}

#[unsafe(no_mangle)]
pub extern "C" fn result_ptr() -> *const u8 {
    RESULT.with(|r| r.borrow().as_ptr())
}

/// The id of the node a page edits through, from its two halves.
fn node(high: u32, low: u32) -> u64 {
    u64::from(high) << 32 | u64::from(low)
}

/// A replica of the encoded text at `ptr`, edited through node `high:low`; its
/// handle, or 0 when it does not decode.
///
/// # Safety
/// As [`bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn replica_load(ptr: *const u8, len: usize, high: u32, low: u32) -> u32 {
    // SAFETY: as documented.
    let Ok(replica) = Replica::load(unsafe { bytes(ptr, len) }, node(high, low)) else {
        return 0;
    };
    REPLICAS.with(|r| {
        let mut replicas = r.borrow_mut();
        replicas.push(Some(replica));
        replicas.len() as u32
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn replica_new(high: u32, low: u32) -> u32 {
    REPLICAS.with(|r| {
        let mut replicas = r.borrow_mut();
        replicas.push(Some(Replica::new(node(high, low))));
        replicas.len() as u32
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn replica_drop(handle: u32) {
    REPLICAS.with(|r| {
        if let Some(slot) = r.borrow_mut().get_mut((handle as usize).wrapping_sub(1)) {
            *slot = None;
        }
    });
}

/// The text shown, in the result buffer (UTF-8); its length.
#[unsafe(no_mangle)]
pub extern "C" fn replica_text(handle: u32) -> i32 {
    with(handle, |r| r.content()).map_or(-1, |text| answer(text.as_bytes()))
}

/// Applies the node's operations (`chorus_text::encode_ops` bytes): 0, or -1.
///
/// # Safety
/// As [`bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn replica_apply(handle: u32, ptr: *const u8, len: usize) -> i32 {
    // SAFETY: as documented.
    let ops = unsafe { bytes(ptr, len) };
    match with(handle, |r| r.apply(ops)) {
        Some(Ok(())) => 0,
        _ => -1,
    }
}

/// Takes in a whole encoded state: 0, or -1.
///
/// # Safety
/// As [`bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn replica_merge(handle: u32, ptr: *const u8, len: usize) -> i32 {
    // SAFETY: as documented.
    let state = unsafe { bytes(ptr, len) };
    match with(handle, |r| r.merge(state)) {
        Some(Ok(())) => 0,
        _ => -1,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn replica_unsend(handle: u32) {
    with(handle, Replica::unsend);
}

/// The page types the UTF-8 text at `ptr` at `pos`.
///
/// # Safety
/// As [`bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn replica_insert(handle: u32, pos: f64, ptr: *const u8, len: usize) {
    // SAFETY: as documented.
    let text = String::from_utf8_lossy(unsafe { bytes(ptr, len) }).into_owned();
    with(handle, |r| r.insert(pos as u64, &text));
}

#[unsafe(no_mangle)]
pub extern "C" fn replica_delete(handle: u32, pos: f64, len: f64) {
    with(handle, |r| r.delete(pos as u64, len as u64));
}

/// The next batch of operations for the field at the JSON pointer at `ptr`, as
/// JSON in the result buffer; its length, or 0 when there is none to send.
///
/// # Safety
/// As [`bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn replica_take_batch(handle: u32, ptr: *const u8, len: usize) -> i32 {
    // SAFETY: as documented.
    let path = String::from_utf8_lossy(unsafe { bytes(ptr, len) }).into_owned();
    match with(handle, |r| r.take_batch(&path)) {
        Some(Some(batch)) => answer(batch.as_bytes()),
        Some(None) => 0,
        None => -1,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn replica_settle(handle: u32) {
    with(handle, Replica::settle);
}

/// An anchor for the cursor at `pos` (the item before it), as text in the result
/// buffer (`AGENT:SEQ`, empty at the start); its length.
#[unsafe(no_mangle)]
pub extern "C" fn replica_anchor(handle: u32, pos: f64) -> i32 {
    let anchor = with(handle, |r| r.anchor(pos as u64)).flatten();
    let text = anchor.map_or(String::new(), |id| format!("{}:{}", id.agent, id.seq));
    answer(text.as_bytes())
}

/// Where the cursor anchored at the text at `ptr` (from `replica_anchor`) is now.
///
/// # Safety
/// As [`bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn replica_anchored(handle: u32, ptr: *const u8, len: usize) -> f64 {
    // SAFETY: as documented.
    let text = String::from_utf8_lossy(unsafe { bytes(ptr, len) }).into_owned();
    let anchor = text.split_once(':').and_then(|(agent, seq)| {
        Some(Id {
            agent: agent.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    });
    with(handle, |r| r.anchored(anchor)).map_or(0.0, |p| p as f64)
}

/// Characters shown.
#[unsafe(no_mangle)]
pub extern "C" fn replica_len(handle: u32) -> f64 {
    with(handle, |r| r.len()).map_or(-1.0, |n| n as f64)
}
