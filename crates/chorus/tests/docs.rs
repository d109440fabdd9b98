//! The documentation's shell examples, run as written against real `chorus`
//! processes, so that a doc cannot drift from the code.
//!
//! Every ```` ```sh ```` block of `README.md` and `docs/*.md` runs, in order, in one
//! `bash` per file, against a three-leader cluster named `a`, `b`, `c` (`$A`, `$B`,
//! `$C`; `$URL` and `CHORUS_URL` are `$A`), with `chorus` on the `PATH`. Before each
//! command the cluster is let converge (digests equal, no lag), as it is by the time
//! a person types the next line. A block is left out, or run elsewhere, by an HTML
//! comment on the line before its fence:
//! - `<!-- docs-test: skip REASON -->`: not run (cargo commands, long-running servers);
//! - `<!-- docs-test: serve ARGS -->`: run alone against a fresh single node started
//!   with `chorus serve ARGS`.
//!
//! Each command must succeed (exit 0, no HTTP status of 400 or more from `curl`)
//! unless its answer says otherwise. A comment `#=> ANSWER` after a command (on its
//! line or the next) is checked against what it printed:
//! - `#=> 409` or `#=> 409 {...}`: the status of its last `curl` request;
//! - `#=> {...}` or `[...]` (JSON): the output contains it: every key shown, with a
//!   value that contains the one shown (arrays element by element, `"..."` matches
//!   anything);
//! - `#=> other text`: the output contains that text.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;
use support::*;

#[test]
fn every_shell_example_of_the_docs_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);

    let (mut ran, mut skipped, mut failures) = (0, 0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut on_cluster = Vec::new();
        for block in shell_blocks(&text) {
            match &block.directive {
                Directive::Skip => skipped += 1,
                Directive::Run => on_cluster.push(block),
                Directive::Serve(args) => {
                    ran += block.commands.len();
                    failures.extend(run_on_one_node(&name, args, &block.commands));
                }
            }
        }
        if !on_cluster.is_empty() {
            let commands: Vec<Step> = on_cluster.into_iter().flat_map(|b| b.commands).collect();
            ran += commands.len();
            failures.extend(run_on_cluster(&name, &commands));
        }
    }
    eprintln!("docs: {ran} commands run, {skipped} blocks skipped");
    assert!(ran > 50, "only {ran} commands found: is the parser right?");
    assert!(
        failures.is_empty(),
        "{} documented commands do not work as written:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A block's fate, from the `<!-- docs-test: ... -->` comment before its fence.
#[derive(Debug, PartialEq)]
enum Directive {
    Run,
    Skip,
    Serve(Vec<String>),
}

struct Block {
    directive: Directive,
    commands: Vec<Step>,
}

/// One shell command (possibly over several lines) and the answer its comment shows.
#[derive(Debug, PartialEq)]
struct Step {
    line: usize,
    text: String,
    answer: Option<String>,
}

fn shell_blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].trim_start().starts_with("```") {
            end += 1;
        }
        if info.trim() == "sh" {
            let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
            let directive = before.map_or(Directive::Run, |line| directive(line));
            let body: Vec<(usize, &str)> = (start..end).map(|n| (n + 1, lines[n])).collect();
            blocks.push(Block {
                directive,
                commands: split_commands(&body),
            });
        }
        i = end + 1;
    }
    blocks
}

fn directive(line: &str) -> Directive {
    let Some(rest) = line
        .trim()
        .strip_prefix("<!-- docs-test:")
        .and_then(|r| r.strip_suffix("-->"))
    else {
        return Directive::Run;
    };
    let mut words = rest.split_whitespace();
    match words.next() {
        Some("skip") => {
            assert!(words.next().is_some(), "a skip must say why: {line}");
            Directive::Skip
        }
        Some("serve") => Directive::Serve(words.map(str::to_owned).collect()),
        _ => panic!("unknown docs-test directive: {line}"),
    }
}

/// Splits a block into commands: a command goes on while a quote is open or its
/// line ends with `\`. Comments are dropped, except a `#=>` answer.
fn split_commands(lines: &[(usize, &str)]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut current: Option<Step> = None;
    let mut quote = None;
    for &(number, line) in lines {
        if current.is_none() {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                if let (Some(answer), Some(last)) = (comment.strip_prefix("=>"), steps.last_mut()) {
                    last.answer.get_or_insert_with(|| answer.trim().to_owned());
                }
                continue;
            }
        }
        let (code, comment) = split_comment(line, &mut quote);
        let step = current.get_or_insert_with(|| Step {
            line: number,
            text: String::new(),
            answer: None,
        });
        step.text.push_str(code.trim_end());
        step.text.push('\n');
        if let Some(answer) = comment.and_then(|c| c.strip_prefix("=>")) {
            step.answer = Some(answer.trim().to_owned());
        }
        if quote.is_none() && !code.trim_end().ends_with('\\') {
            steps.extend(current.take());
        }
    }
    assert!(current.is_none(), "unterminated command: {current:?}");
    steps
}

/// The code and the comment (after `#`) of one line, given the quote open at its
/// start (updated to the one open at its end).
fn split_comment<'a>(line: &'a str, quote: &mut Option<char>) -> (&'a str, Option<&'a str>) {
    let mut previous = ' ';
    let mut chars = line.char_indices();
    while let Some((at, c)) = chars.next() {
        match (*quote, c) {
            (None, '#') if previous.is_whitespace() => return (&line[..at], Some(&line[at + 1..])),
            (None | Some('"'), '\\') => {
                chars.next();
            }
            (None, '\'' | '"') => *quote = Some(c),
            (Some(open), _) if c == open => *quote = None,
            _ => {}
        }
        previous = c;
    }
    (line, None)
}

fn run_on_cluster(file: &str, steps: &[Step]) -> Vec<String> {
    let cluster = Cluster::start_named(&["a", "b", "c"], "topology = \"mesh\"");
    cluster.wait_converged(Duration::from_secs(60));
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    run(file, &urls, steps)
}

fn run_on_one_node(file: &str, args: &[String], steps: &[Step]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = NodeProcess::start(&dir.path().join("data"), &args);
    run(file, std::slice::from_ref(&node.url), steps)
}

/// Bash run before the steps: `curl` also reports each answer's status on stderr,
/// and `__settle` waits (at most 60 s) until the nodes agree and nothing lags.
const PRELUDE: &str = r#"
set -o pipefail
curl() { command curl -w '%{stderr}\n@@http %{http_code}\n' "$@"; }
__settle() {
    local deadline=$((SECONDS + 60))
    while :; do
        local digests="" behind=0 node
        for node in $__NODES; do
            digests+="$(command curl -s "$node/v1/digest" | jq -r .digest) "
            behind=$((behind + $(command curl -s "$node/v1/status" \
                | jq '[.peers[] | select(.lag_ops != 0 or .connected != true)] | length')))
        done
        if [ "$behind" = 0 ] && [ "$(tr ' ' '\n' <<<"$digests" | sort -u | grep -c .)" = 1 ]; then
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "the cluster did not converge within 60 s" >&2
            return 1
        fi
        sleep 0.05
    done
}
"#;

/// Runs `steps` in one bash against the nodes at `urls` and checks each answer.
fn run(file: &str, urls: &[String], steps: &[Step]) -> Vec<String> {
    let mut script = PRELUDE.to_owned();
    for (i, step) in steps.iter().enumerate() {
        script.push_str(&format!(
            "__settle || exit 97\nprintf '\\n@@step {i}\\n'; printf '\\n@@step {i}\\n' >&2\n{}printf '\\n@@exit %d\\n' $? >&2\n",
            step.text
        ));
    }
    let work = tempfile::tempdir().unwrap();
    let chorus_dir = Path::new(CHORUS).parent().unwrap();
    let path = format!(
        "{}:{}",
        chorus_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let letters = ["A", "B", "C"];
    let mut bash = Process::new("bash");
    bash.arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .env("PATH", path)
        .env("__NODES", urls.join(" "))
        .env("URL", &urls[0])
        .env("CHORUS_URL", &urls[0])
        .env_remove("CHORUS_TOKEN");
    for (letter, url) in letters.iter().zip(urls) {
        bash.env(letter, url);
    }
    let output = bash.output().expect("running bash");
    if output.status.code() == Some(97) {
        return vec![format!(
            "{file}: the cluster did not converge: {}",
            String::from_utf8_lossy(&output.stderr)
        )];
    }
    let stdout = by_step(&String::from_utf8_lossy(&output.stdout));
    let stderr = by_step(&String::from_utf8_lossy(&output.stderr));
    let mut failures = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let out = stdout.get(&i).map_or("", String::as_str);
        let err = stderr.get(&i).map_or("", String::as_str);
        if let Err(problem) = check(step, out, err) {
            failures.push(format!(
                "{file}:{} {}  {problem}\n  --- output:\n{}\n  --- stderr:\n{}",
                step.line,
                step.text.trim_end(),
                indent(out),
                indent(err)
            ));
        }
    }
    failures
}

/// Splits the output of the whole script at its `@@step N` lines.
fn by_step(output: &str) -> BTreeMap<usize, String> {
    let mut steps = BTreeMap::new();
    let mut current = None;
    for line in output.lines() {
        if let Some(n) = line.strip_prefix("@@step ") {
            current = n.parse().ok();
            continue;
        }
        if let Some(n) = current {
            let text: &mut String = steps.entry(n).or_default();
            text.push_str(line);
            text.push('\n');
        }
    }
    steps
}

/// Whether a step's exit code, statuses and output agree with its documented answer.
fn check(step: &Step, out: &str, err: &str) -> Result<(), String> {
    let exit = err
        .lines()
        .filter_map(|l| l.strip_prefix("@@exit "))
        .next_back()
        .ok_or("did not finish (the shell stopped before it)")?;
    if exit != "0" {
        return Err(format!("exited with {exit}"));
    }
    let statuses: Vec<u16> = err
        .lines()
        .filter_map(|l| l.strip_prefix("@@http "))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let answer = step.answer.as_deref().unwrap_or("");
    let (status, shown) = match answer.split_once(' ').unwrap_or((answer, "")) {
        (code, rest) if code.len() == 3 && code.parse::<u16>().is_ok() => {
            (Some(code.parse::<u16>().unwrap()), rest.trim())
        }
        _ => (None, answer),
    };
    match status {
        Some(expected) if statuses.last() != Some(&expected) => {
            return Err(format!("answered HTTP {statuses:?}, documented {expected}"));
        }
        None if statuses.iter().any(|&s| s >= 400) => {
            return Err(format!(
                "answered HTTP {statuses:?} (document the error with #=> STATUS)"
            ));
        }
        _ => {}
    }
    if shown.is_empty() {
        return Ok(());
    }
    let out = out.trim();
    match serde_json::from_str::<Value>(shown) {
        Ok(expected) => {
            let actual: Value = serde_json::from_str(out)
                .map_err(|e| format!("the output is not JSON ({e}); documented {shown}"))?;
            if contains(&actual, &expected) {
                Ok(())
            } else {
                Err(format!(
                    "the output does not contain the documented {shown}"
                ))
            }
        }
        Err(_) if out.contains(shown) => Ok(()),
        Err(_) => Err(format!("the output does not contain {shown:?}")),
    }
}

/// Whether `actual` shows everything `shown` shows (`"..."` stands for anything).
fn contains(actual: &Value, shown: &Value) -> bool {
    match (actual, shown) {
        (_, Value::String(s)) if s == "..." => true,
        (Value::Object(a), Value::Object(s)) => s
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|got| contains(got, v))),
        (Value::Array(a), Value::Array(s)) => {
            a.len() == s.len() && a.iter().zip(s).all(|(got, v)| contains(got, v))
        }
        _ => actual == shown,
    }
}

fn indent(text: &str) -> String {
    let text = text.trim();
    let shown: String = text.chars().take(2000).collect();
    shown.lines().map(|l| format!("    {l}\n")).collect()
}

#[test]
fn commands_split_at_lines_unless_quoted_or_continued() {
    let block = [
        (1, "chorus get a b   #=> {\"x\": 1}"),
        (2, "# prose about it"),
        (3, "curl -X PUT $A/x -d '{"),
        (4, "  \"its\": \"# not a comment\"' \\"),
        (5, "  -H 'H: v'"),
        (6, "#=> 409 {\"error\": \"locked\"}"),
        (7, "echo \"a's\" # b's"),
    ];
    let steps = split_commands(&block);
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert_eq!(steps[0].answer.as_deref(), Some("{\"x\": 1}"));
    assert_eq!(steps[1].line, 3);
    assert!(steps[1].text.contains("# not a comment"), "{steps:?}");
    assert_eq!(
        steps[1].answer.as_deref(),
        Some("409 {\"error\": \"locked\"}")
    );
    assert_eq!(steps[2].text, "echo \"a's\"\n");
}

#[test]
fn an_answer_is_contained_key_by_key() {
    let actual: Value = serde_json::json!({"value": {"eur": 12, "usd": 13}, "context": "x"});
    assert!(contains(
        &actual,
        &serde_json::json!({"value": {"eur": 12}})
    ));
    assert!(contains(&actual, &serde_json::json!({"context": "..."})));
    assert!(!contains(
        &actual,
        &serde_json::json!({"value": {"eur": 10}})
    ));
    assert!(!contains(&actual, &serde_json::json!({"versions": "..."})));
    assert!(!contains(
        &serde_json::json!([1, 2]),
        &serde_json::json!([1])
    ));
}
