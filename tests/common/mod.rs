//! Shared helpers of the integration tests: where the reference fixtures are.
#![allow(dead_code)]

use std::path::PathBuf;

/// `$INTERNLM2_FIXTURES`, or `../shared/fixtures` beside the workspace.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("INTERNLM2_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    assert!(
        dir.is_dir(),
        "reference fixtures not found at {} (set INTERNLM2_FIXTURES)",
        dir.display()
    );
    dir
}

/// The two tiny model fixtures.
pub fn model_fixtures() -> Vec<PathBuf> {
    ["tiny-internlm2", "tiny-internlm2-sharded"]
        .iter()
        .map(|name| fixtures().join(name))
        .collect()
}

/// The fixture's `reference.json`.
pub fn reference(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("valid reference.json")
}

/// A `[batch][seq]` integer array.
pub fn ints2(value: &serde_json::Value) -> Vec<Vec<i64>> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_i64().expect("int"))
                .collect()
        })
        .collect()
}

/// A `[batch][seq][vocab]` float array, flattened.
pub fn floats3(value: &serde_json::Value) -> (Vec<f32>, [usize; 3]) {
    let rows = value.as_array().expect("array");
    let (b, s) = (rows.len(), rows[0].as_array().unwrap().len());
    let v = rows[0][0].as_array().unwrap().len();
    let mut flat = Vec::with_capacity(b * s * v);
    for row in rows {
        for pos in row.as_array().unwrap() {
            flat.extend(
                pos.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32),
            );
        }
    }
    (flat, [b, s, v])
}
