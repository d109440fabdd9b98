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
//! budget does so on every replica alike. A handler that fails, loops past its
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
            .set_max_call_levels(32)
            .set_max_expr_depths(64, 32);
        engine.disable_symbol("eval");
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
            let a = resolve(&*script, forward.versions());
            let b = resolve(&*script, other.versions());
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
