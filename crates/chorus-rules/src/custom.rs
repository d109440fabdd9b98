//! Custom conflict handlers: the `custom` policy.
//!
//! A handler receives every live version of a document in conflict (sorted by dot)
//! and, when known, their common ancestor, and returns the merged document. In the
//! library it is any [`MergeHandler`] (`Node::set_merge_handler`); on the server it
//! is a [Rhai](https://rhai.rs) script in the collection's settings, which replicate,
//! so every replica runs the same script:
//!
//! ```rhai
//! fn merge(versions, ancestor) {
//!     let out = versions[0];
//!     for v in versions { if v.score > out.score { out = v; } }
//!     out
//! }
//! ```
//!
//! **Invariant:** a script's answer depends only on its inputs. The engine has no
//! clock, no randomness, no file, network or module access, and its limits are
//! counted in operations and sizes, not wall-clock time, so a script that runs out of
//! budget does so on every replica alike.
//!
//! **Invariant:** a script holds at most [`SCRIPT_DATA_BYTES_MAX`] in its variables
//! (checked every [`DATA_CHECK_READS`] variable reads, a count that is the same on
//! every replica), and at most [`SCRIPT_RUNS_MAX`] scripts run at once on a node, so
//! reads of documents in conflict cannot take a node's memory. Rhai's own limits
//! bound each string, array and map, but not how many a script keeps: a map of
//! 9,000 strings of 512 KiB, each built by one operation, once held 4.5 GiB. A handler that fails, loops past its
//! budget, panics, or returns something other than a JSON object leaves the
//! document in conflict (its siblings shown) and says why (`merge_error`, the log,
//! `chorus_merge_handler_failures_total`).

use crate::merge;
use chorus_core::{Version, VersionVector};
use rhai::{AST, Dynamic, Engine, Scope};
use serde_json::Value;
use std::sync::{Arc, OnceLock};

/// Operations a script may run per merge (a loop of a million steps is refused).
pub const SCRIPT_OPERATIONS_MAX: u64 = 200_000;
/// Largest string, array and map a script may build.
const SCRIPT_STRING_BYTES_MAX: usize = 1 << 20;
const SCRIPT_COLLECTION_ITEMS_MAX: usize = 10_000;
/// Largest script accepted in collection settings.
pub const SCRIPT_BYTES_MAX: usize = 64 * 1024;
/// Bytes a script's variables (and the object its running method works on) may
/// hold at once beyond the versions it was given: string and blob bytes, plus 16 per
/// array element or map entry (a string shared by several variables counts each
/// time). Past it the script fails, leaving the document in conflict. The objects of
/// enclosing method calls are out of sight while a nested one runs, so nesting
/// ([`SCRIPT_CALL_LEVELS_MAX`]) multiplies this bound at worst.
pub const SCRIPT_DATA_BYTES_MAX: usize = 64 << 20;
/// Nested function calls a script may make.
pub const SCRIPT_CALL_LEVELS_MAX: usize = 8;
/// Variable reads between two measures of what a script holds: a script can grow by
/// at most this many largest strings between them.
const DATA_CHECK_READS: u32 = 16;
/// Scripts running at once on a node; more wait their turn.
pub const SCRIPT_RUNS_MAX: usize = 2;

thread_local! {
    /// Variable reads of the script running on this thread.
    static VARIABLE_READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// What the script running on this thread may hold: its inputs and
    /// `SCRIPT_DATA_BYTES_MAX`.
    static DATA_BYTES_BUDGET: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What a value holds, as `SCRIPT_DATA_BYTES_MAX` counts it.
fn data_bytes(value: &Dynamic) -> usize {
    if let Ok(text) = value.as_immutable_string_ref() {
        text.len()
    } else if let Ok(blob) = value.as_blob_ref() {
        blob.len()
    } else if let Ok(items) = value.as_array_ref() {
        items.iter().map(|v| 16 + data_bytes(v)).sum()
    } else if let Ok(map) = value.as_map_ref() {
        map.iter().map(|(k, v)| 16 + k.len() + data_bytes(v)).sum()
    } else {
        0
    }
}

/// Every few variable reads, refuses to go on once the variables in scope (those of
/// the calling functions included) and the running method's object hold more than
/// the budget.
fn check_held_data(context: &rhai::EvalContext) -> Result<(), Box<rhai::EvalAltResult>> {
    let reads = VARIABLE_READS.get().wrapping_add(1);
    VARIABLE_READS.set(reads);
    if !reads.is_multiple_of(DATA_CHECK_READS) {
        return Ok(());
    }
    let budget = DATA_BYTES_BUDGET.get();
    let mut held = context.this_ptr().map_or(0, data_bytes);
    for (_, _, value) in context.scope().iter_raw() {
        held += data_bytes(value);
        if held > budget {
            break;
        }
    }
    if held > budget {
        return Err(format!(
            "the script holds more than {SCRIPT_DATA_BYTES_MAX} bytes of data beyond its inputs"
        )
        .into());
    }
    Ok(())
}

/// Counts scripts running at once (at most `SCRIPT_RUNS_MAX`).
struct RunSlots {
    running: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

/// A turn to run a script; the slot frees when it is dropped.
struct RunSlot(&'static RunSlots);

impl RunSlots {
    fn take(&'static self) -> RunSlot {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= SCRIPT_RUNS_MAX {
            running = self.freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        RunSlot(self)
    }
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}

static RUN_SLOTS: RunSlots = RunSlots {
    running: std::sync::Mutex::new(0),
    freed: std::sync::Condvar::new(),
};

/// Merges the versions of a document in conflict.
pub trait MergeHandler: Send + Sync {
    /// `versions` are the live documents, sorted by their dots; `ancestor` is the
    /// document they were all based on, when the node can tell. Returns the merge,
    /// a JSON object.
    fn merge(&self, versions: &[Value], ancestor: Option<&Value>) -> Result<Value, String>;
}

/// A compiled Rhai script defining `fn merge(versions, ancestor)`.
pub struct Script {
    ast: AST,
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        // No print, no modules, no clock (the crate is built with `no_time`,
        // `no_module`), nothing registered but the standard language library.
        let mut engine = Engine::new_raw();
        engine.register_global_module(rhai::packages::Package::as_shared_module(
            &rhai::packages::StandardPackage::new(),
        ));
        engine
            .set_max_operations(SCRIPT_OPERATIONS_MAX)
            .set_max_string_size(SCRIPT_STRING_BYTES_MAX)
            .set_max_array_size(SCRIPT_COLLECTION_ITEMS_MAX)
            .set_max_map_size(SCRIPT_COLLECTION_ITEMS_MAX)
            .set_max_call_levels(SCRIPT_CALL_LEVELS_MAX)
            .set_max_expr_depths(64, 32);
        engine.disable_symbol("eval");
        // `on_var` is marked volatile, not deprecated; it is the one hook that sees
        // what a script's variables hold.
        #[allow(deprecated)]
        engine.on_var(|_, _, context| check_held_data(&context).map(|()| None));
        engine
    })
}

impl Script {
    /// Compiles `text`; it must define `merge` with two parameters.
    pub fn compile(text: &str) -> Result<Script, String> {
        if text.len() > SCRIPT_BYTES_MAX {
            return Err(format!("the script is over {SCRIPT_BYTES_MAX} bytes"));
        }
        let ast = engine()
            .compile(text)
            .map_err(|e| format!("the script does not compile: {e}"))?;
        if !ast
            .iter_functions()
            .any(|f| f.name == "merge" && f.params.len() == 2)
        {
            return Err("the script must define fn merge(versions, ancestor)".into());
        }
        Ok(Script { ast })
    }

    /// The compiled form of `text`, from a small cache (settings are read often).
    pub fn cached(text: &str) -> Result<Arc<Script>, String> {
        type Cache = std::sync::Mutex<std::collections::HashMap<String, Arc<Script>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(script) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(text) {
            return Ok(Arc::clone(script));
        }
        let script = Arc::new(Script::compile(text)?);
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(text.to_owned(), Arc::clone(&script));
        Ok(script)
    }
}

impl MergeHandler for Script {
    fn merge(&self, versions: &[Value], ancestor: Option<&Value>) -> Result<Value, String> {
        let to_dynamic = |v: &Value| rhai::serde::to_dynamic(v).map_err(|e| e.to_string());
        let versions: Vec<Dynamic> = versions.iter().map(to_dynamic).collect::<Result<_, _>>()?;
        let ancestor = match ancestor {
            Some(a) => to_dynamic(a)?,
            None => Dynamic::UNIT,
        };
        let inputs = versions
            .iter()
            .chain([&ancestor])
            .map(data_bytes)
            .sum::<usize>();
        let _slot = RUN_SLOTS.take();
        VARIABLE_READS.set(0);
        DATA_BYTES_BUDGET.set(SCRIPT_DATA_BYTES_MAX + inputs);
        let result: Dynamic = engine()
            .call_fn(&mut Scope::new(), &self.ast, "merge", (versions, ancestor))
            .map_err(|e| format!("the script failed: {e}"))?;
        rhai::serde::from_dynamic::<Value>(&result)
            .map_err(|e| format!("the script returned something that is not JSON: {e}"))
    }
}

/// The outcome of resolving a document's versions with a handler.
pub struct Resolved {
    /// The merged document (or the only live one); `None` when deleted or failed.
    pub value: Option<Vec<u8>>,
    /// Why the handler left the versions in conflict.
    pub error: Option<String>,
}

/// Resolves `versions` (a key state's, sorted by dot) with `handler`: nothing to do
/// for zero or one live version; otherwise the handler merges them (a panic is
/// caught and reported like an error).
pub fn resolve(handler: &dyn MergeHandler, versions: &[Version]) -> Resolved {
    let live: Vec<&Version> = versions.iter().filter(|v| !v.is_tombstone()).collect();
    let document = |v: &Version| -> Option<Value> {
        serde_json::from_slice(&crate::document_bytes(v.value.as_deref()?)).ok()
    };
    match live.as_slice() {
        [] => {
            return Resolved {
                value: None,
                error: None,
            };
        }
        [only] => {
            return Resolved {
                value: only
                    .value
                    .as_deref()
                    .map(|b| crate::document_bytes(b).into_owned()),
                error: None,
            };
        }
        _ => {}
    }
    let docs: Vec<Value> = live.iter().filter_map(|v| document(v)).collect();
    let ancestor = common_ancestor(versions);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler.merge(&docs, ancestor.as_ref())
    }))
    .unwrap_or_else(|_| Err("the handler panicked".into()));
    match outcome {
        Ok(merged @ Value::Object(_)) => Resolved {
            value: Some(serde_json::to_vec(&merged).expect("JSON serialises")),
            error: None,
        },
        Ok(other) => Resolved {
            value: None,
            error: Some(format!("the handler returned {other}, not a JSON object")),
        },
        Err(error) => Resolved {
            value: None,
            error: Some(error),
        },
    }
}

/// The document every live version was written from, when they were all written
/// with one context (the usual case: concurrent edits of the same read) and the
/// node can rebuild that read.
fn common_ancestor(versions: &[Version]) -> Option<Value> {
    let contexts: Vec<VersionVector> = versions
        .iter()
        .filter(|v| !v.is_tombstone())
        .map(merge::written_context)
        .collect::<Option<_>>()?;
    let first = contexts.first()?;
    if first.is_empty() || contexts.iter().any(|c| c != first) {
        return None;
    }
    let base = merge::base_for(versions, first, &merge::MergeRules::default());
    serde_json::from_slice(base.value.as_deref()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::{Dot, Hlc, KeyState, NodeId, Op};
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// Concurrent writes of several nodes, delivered in any order (each node's
        /// in its own order, as replication does) and with duplicates, resolve to the
        /// same document through a script.
        #[test]
        fn every_delivery_order_resolves_the_same(
            values in proptest::collection::vec((1u64..4, 0i64..100), 2..8),
            seed in any::<u64>(),
        ) {
            let script = Script::cached(
                "fn merge(v, a) { let t = 0; for d in v { t += d.n; } #{ n: t, count: v.len() } }",
            ).unwrap();
            let mut counters = [0u64; 4];
            let ops: Vec<Op> = values.iter().map(|&(node, n)| {
                counters[node as usize] += 1;
                Op {
                    dot: Dot::new(NodeId(node), counters[node as usize]),
                    hlc: Hlc(n as u64),
                    collection: "c".into(),
                    key: "k".into(),
                    context: VersionVector::new(),
                    value: Some(json!({ "n": n }).to_string().into_bytes()),
                }
            }).collect();
            let mut forward = KeyState::new();
            ops.iter().for_each(|op| { forward.apply(op).unwrap(); });
            // Another delivery: the nodes' ops interleaved at random, each node's in
            // its own order (as replication delivers them), then a duplicate.
            let mut queues: Vec<std::collections::VecDeque<&Op>> = (0..4)
                .map(|node| ops.iter().filter(|op| op.dot.node == NodeId(node)).collect())
                .collect();
            let mut other = KeyState::new();
            let mut x = seed | 1;
            while queues.iter().any(|q| !q.is_empty()) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                let ready: Vec<usize> = (0..4).filter(|&q| !queues[q].is_empty()).collect();
                let pick = ready[(x % ready.len() as u64) as usize];
                other.apply(queues[pick].pop_front().expect("not empty")).unwrap();
            }
            other.apply(&ops[0]).unwrap();
            let a = resolve(&*script, &forward.versions());
            let b = resolve(&*script, &other.versions());
            prop_assert_eq!(a.value, b.value);
            prop_assert_eq!(a.error, b.error);
        }
    }

    const HIGHEST_SCORE: &str = r#"
        fn merge(versions, ancestor) {
            let out = versions[0];
            for v in versions { if v.score > out.score { out = v; } }
            out.ancestor_title = if ancestor == () { "unknown" } else { ancestor.title };
            out
        }
    "#;

    /// A script merges, sees the ancestor when there is one, and is cached.
    #[test]
    fn a_script_merges() {
        let script = Script::cached(HIGHEST_SCORE).unwrap();
        let versions = [
            json!({"score": 3, "title": "a"}),
            json!({"score": 7, "title": "b"}),
        ];
        let merged = script
            .merge(&versions, Some(&json!({"title": "start"})))
            .unwrap();
        assert_eq!(
            merged,
            json!({"score": 7, "title": "b", "ancestor_title": "start"})
        );
        let merged = script.merge(&versions, None).unwrap();
        assert_eq!(merged["ancestor_title"], "unknown");
        assert!(Arc::ptr_eq(
            &script,
            &Script::cached(HIGHEST_SCORE).unwrap()
        ));
    }

    /// Bad scripts are refused when set; at merge time, a loop, a thrown error, a
    /// non-object answer and a panicking library handler all leave the conflict and
    /// say why; the engine has no clock.
    #[test]
    fn bad_handlers_leave_the_conflict() {
        for (text, needle) in [
            ("fn merge(a, b) {", "does not compile"),
            ("fn other(a, b) { a }", "must define fn merge"),
            ("fn merge(a) { a }", "must define fn merge"),
        ] {
            let err = Script::compile(text).err().expect("refused");
            assert!(err.contains(needle), "{err}");
        }
        let versions = [json!({"n": 1}), json!({"n": 2})];
        for (text, needle) in [
            ("fn merge(v, a) { loop { } }", "Too many operations"),
            ("fn merge(v, a) { throw \"no way\" }", "no way"),
            ("fn merge(v, a) { timestamp() }", "timestamp"),
            ("fn merge(v, a) { Fn(\"merge\") }", "not JSON"),
            (
                "fn merge(v, a) { let s = \"x\"; loop { s += s; } }",
                "Length of string",
            ),
            // Within every per-object limit, 4.5 GiB in all if nothing stopped it.
            (
                "fn merge(v, a) { let s = \"x\"; while s.len() < 524288 { s += s; } \
                 let m = #{}; for i in 0..9000 { m[i.to_string()] = s + i; } v[0] }",
                "holds more than",
            ),
            // The same in a method of the caller's variable: it counts there too.
            (
                "fn fill(s) { for i in 0..9000 { this[i.to_string()] = s + i; } } \
                 fn merge(v, a) { let s = \"x\"; while s.len() < 524288 { s += s; } \
                 let all = #{}; all.fill(s); v[0] }",
                "holds more than",
            ),
        ] {
            let err = Script::compile(text)
                .unwrap()
                .merge(&versions, None)
                .unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }

        struct Panics;
        impl MergeHandler for Panics {
            fn merge(&self, _: &[Value], _: Option<&Value>) -> Result<Value, String> {
                panic!("bug in a handler")
            }
        }
        let two = [
            Version {
                dot: chorus_core::Dot::new(chorus_core::NodeId(1), 1),
                hlc: chorus_core::Hlc(1),
                value: Some(b"{\"n\":1}".to_vec()),
            },
            Version {
                dot: chorus_core::Dot::new(chorus_core::NodeId(2), 1),
                hlc: chorus_core::Hlc(2),
                value: Some(b"{\"n\":2}".to_vec()),
            },
        ];
        let resolved = resolve(&Panics, &two);
        assert_eq!(resolved.value, None);
        assert_eq!(resolved.error.as_deref(), Some("the handler panicked"));
        let list = Script::compile("fn merge(v, a) { [1, 2] }").unwrap();
        let resolved = resolve(&*Arc::new(list), &two);
        assert!(resolved.error.unwrap().contains("not a JSON object"));
        let sum = Script::compile("fn merge(v, a) { #{ n: v[0].n + v[1].n } }").unwrap();
        let resolved = resolve(&sum, &two);
        assert_eq!(resolved.value.as_deref(), Some(&b"{\"n\":3}"[..]));
    }
}
