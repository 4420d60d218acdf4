//! Shared helpers of the quantization tests: where the reference fixtures are
//! (`$INTERNLM2_FIXTURES`, or `../shared/fixtures` beside the workspace) and how to read them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The fixtures directory.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("INTERNLM2_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
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
        .map(|n| fixtures().join(n))
        .collect()
}

/// The fixture's `reference.json`.
pub fn reference(dir: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"),
    )
    .expect("valid reference.json")
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

/// Checks a model that loaded from a mutated file: its config is valid, it has the layers the
/// config says and a forward pass gives logits of the config's shape.
pub fn check_loaded_model(model: &internlm2::InternLM2<internlm2::backends::Cpu>) {
    use burn::tensor::{Int, Tensor, TensorData};
    let c = model.config();
    c.validate().expect("a loaded config is valid");
    assert_eq!(model.model.layers.len(), c.num_hidden_layers);
    let ids = Tensor::<internlm2::backends::Cpu, 2, Int>::from_data(
        TensorData::new(vec![1i64, 2], [1, 2]),
        &Default::default(),
    );
    assert_eq!(model.forward(ids).dims(), [1, 2, c.vocab_size]);
}
