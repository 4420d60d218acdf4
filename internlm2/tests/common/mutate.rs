//! Crate-independent helpers of the hostile-input property tests: the number of cases, a time
//! bound per case, and byte and JSON mutators. Also used by `datasets/tests/hostile_*.rs`
//! (through `#[path]`), so it depends on nothing but std, proptest and serde_json.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Cases per property: `HOSTILE_CASES` when set, else `default`.
pub fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // Shrinking re-runs the (time-bounded) case; a few hundred steps are plenty.
        max_shrink_iters: 512,
        // A failing case that hangs would make shrinking take hours; stop after two minutes
        // and report the smallest case found so far.
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    }
}

/// Runs `f` on its own thread and returns its result; panics (failing the case) when it takes
/// longer than `limit`, and re-raises its panic with the original message.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (send, recv) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let out = f();
        let _ = send.send(());
        out
    });
    match recv.recv_timeout(limit) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the case ran past its time bound of {limit:?}")
        }
    }
}

/// The time bound of one case (generous: a debug build on a loaded 2-core machine).
pub const CASE_LIMIT: Duration = Duration::from_secs(20);

// --- Mutators.

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum ByteEdit {
    /// Overwrite the byte at (position mod len).
    Set(usize, u8),
    /// Flip one bit.
    Flip(usize, u8),
    /// Overwrite 8 bytes with a little-endian integer (sizes, offsets, counts).
    Word(usize, u64),
    /// Cut the file at (position mod len).
    Truncate(usize),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
    /// Remove a range.
    Remove(usize, usize),
    /// Duplicate a range.
    Duplicate(usize, usize),
}

/// Integers that break size arithmetic.
pub fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 7),
        Just(u32::MAX as u64),
        Just(u32::MAX as u64 + 1),
        Just(1 << 31),
        Just(1 << 40),
        Just(1 << 61),
        Just(1 << 63),
        any::<u64>(),
        0u64..1024,
    ]
}

/// A byte edit.
pub fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        3 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        3 => (any::<usize>(), extreme_u64()).prop_map(|(i, w)| ByteEdit::Word(i, w)),
        1 => any::<usize>().prop_map(ByteEdit::Truncate),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| ByteEdit::Remove(i, n)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| ByteEdit::Duplicate(i, n)),
    ]
}

/// Applies edits; positions are taken modulo the current length. `focus` (a prefix length)
/// biases half of the positions into the first `focus` bytes, where headers live.
pub fn apply_edits(bytes: &mut Vec<u8>, edits: &[ByteEdit], focus: usize) {
    for (n, edit) in edits.iter().enumerate() {
        let len = bytes.len();
        let at = |i: usize| {
            if len == 0 {
                0
            } else if focus > 0 && n % 2 == 0 {
                i % focus.min(len)
            } else {
                i % len
            }
        };
        match edit {
            ByteEdit::Set(i, b) if len > 0 => bytes[at(*i)] = *b,
            ByteEdit::Flip(i, bit) if len > 0 => bytes[at(*i)] ^= 1 << bit,
            ByteEdit::Word(i, w) if len >= 8 => {
                let p = at(*i).min(len - 8);
                bytes[p..p + 8].copy_from_slice(&w.to_le_bytes());
            }
            ByteEdit::Truncate(i) => bytes.truncate(if len == 0 { 0 } else { i % len }),
            ByteEdit::Insert(i, b) => {
                let p = if len == 0 { 0 } else { at(*i) };
                bytes.splice(p..p, b.iter().copied());
            }
            ByteEdit::Remove(i, n) if len > 0 => {
                let p = at(*i);
                bytes.drain(p..(p + n).min(len));
            }
            ByteEdit::Duplicate(i, n) if len > 0 => {
                let p = at(*i);
                let chunk = bytes[p..(p + n).min(len)].to_vec();
                bytes.splice(p..p, chunk);
            }
            _ => {}
        }
    }
}

/// JSON values that break what a parser expects of a field.
pub fn hostile_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        extreme_u64().prop_map(|v| json!(v)),
        any::<i64>().prop_map(|v| json!(v)),
        prop_oneof![
            Just(0.0f64),
            Just(-1.0),
            Just(1e-300),
            Just(1e300),
            Just(0.5),
            Just(1.0),
            Just(f64::MAX),
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
        ]
        .prop_map(|v| json!(v)),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!("")),
        Just(json!("../../etc/passwd")),
        Just(json!("/dev/zero")),
        "[a-z.0-9/-]{0,24}".prop_map(|s| json!(s)),
        Just(json!([])),
        Just(json!({})),
        proptest::collection::vec(extreme_u64(), 0..4).prop_map(|v| json!(v)),
    ]
}

/// A path into a JSON value: a sequence of choices, each taken modulo the children.
pub type JsonPath = Vec<usize>;

/// Replaces (or, for an object, adds or removes) the node that `path` leads to.
pub fn mutate_json(value: &mut serde_json::Value, path: &[usize], new: serde_json::Value) {
    use serde_json::Value;
    let Some((&step, rest)) = path.split_first() else {
        *value = new;
        return;
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(step % map.len()).unwrap().clone();
            if rest.is_empty() && step % 7 == 6 {
                map.remove(&key);
            } else {
                mutate_json(map.get_mut(&key).unwrap(), rest, new);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let n = items.len();
            mutate_json(&mut items[step % n], rest, new);
        }
        _ => *value = new,
    }
}

/// A JSON mutation: where, and what to put there.
pub fn json_edit() -> impl Strategy<Value = (JsonPath, serde_json::Value)> {
    (
        proptest::collection::vec(any::<usize>(), 0..5),
        hostile_json(),
    )
}

/// Applies a JSON edit to the JSON file `name` (or to the JSON header of a safetensors file).
pub fn edit_json_file(
    files: &mut [(String, Vec<u8>)],
    name: &str,
    path: &[usize],
    value: serde_json::Value,
) {
    for (file, bytes) in files.iter_mut() {
        if file != name {
            continue;
        }
        if name.ends_with(".safetensors") {
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            mutate_json(&mut header, path, value.clone());
            let text = header.to_string();
            let mut out = (text.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(&bytes[8 + n..]);
            *bytes = out;
        } else {
            let mut json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            mutate_json(&mut json, path, value.clone());
            *bytes = json.to_string().into_bytes();
        }
    }
}

/// Every file of a directory, by name.
pub fn read_dir_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}
