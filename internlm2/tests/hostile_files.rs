//! Property tests (issue 16): mutated bytes of every file format the core crate reads —
//! `config.json`, safetensors (one file and shards), `model.safetensors.index.json`,
//! `tokenizer.model` and `tokenizer.json` — must load as `Ok` or a typed error, never panic,
//! abort or run past the per-case time bound. Seeds are valid files written on the fly; each
//! case applies byte edits (biased towards headers) or JSON edits (a field set to a hostile
//! value, or removed). Failing inputs are shrunk and persisted by proptest.
//!
//! `HOSTILE_CASES=n` overrides the number of cases of every property.

mod common;

use std::sync::OnceLock;

use burn::tensor::DType;
use common::{ByteEdit, CASE_LIMIT, apply_edits, byte_edit, cases, json_edit, within};
use internlm2::backends::Cpu;
use internlm2::{InternLM2, InternLM2Config, Tokenizer};
use proptest::prelude::*;

/// The seed checkpoints, written once: one file, and shards with an index.
struct Seeds {
    _dir: tempfile::TempDir,
    single: Vec<(String, Vec<u8>)>,
    sharded: Vec<(String, Vec<u8>)>,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (single, sharded) = (dir.path().join("single"), dir.path().join("sharded"));
        let config = common::tiny_config();
        common::write_checkpoint(&single, &config, None);
        common::write_checkpoint(&sharded, &config.with_tie_word_embeddings(true), Some(4096));
        Seeds {
            single: common::mutate::read_dir_files(&single),
            sharded: common::mutate::read_dir_files(&sharded),
            _dir: dir,
        }
    })
}

/// Writes `files` into a fresh directory and loads it as a model, time-bounded. A model that
/// loads must agree with its config.
fn load_files(files: Vec<(String, Vec<u8>)>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in &files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let path = dir.path().to_path_buf();
    within(CASE_LIMIT, move || {
        if let Ok(model) = InternLM2::<Cpu>::load(&path, DType::F32, &Default::default()) {
            let c = model.config();
            c.validate().expect("a loaded config is valid");
            assert_eq!(model.model.layers.len(), c.num_hidden_layers);
        }
    });
}

/// Applies `edits` to the file whose name ends with `suffix`.
fn edit_file(files: &mut [(String, Vec<u8>)], suffix: &str, edits: &[ByteEdit], focus: usize) {
    for (name, bytes) in files.iter_mut() {
        if name.ends_with(suffix) {
            apply_edits(bytes, edits, focus);
        }
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    /// config.json: byte edits and hostile field values, parsed alone.
    #[test]
    fn config_json_parses_or_is_a_typed_error(
        edits in proptest::collection::vec(byte_edit(), 0..4),
        json in proptest::collection::vec(json_edit(), 0..3),
    ) {
        let mut text = common::tiny_config()
            .with_rope_scaling(Some(internlm2::RopeScaling::Dynamic { factor: 2.0 }))
            .to_hf_json("float32")
            .into_bytes();
        let mut value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        for (path, new) in json {
            common::mutate_json(&mut value, &path, new);
        }
        text = value.to_string().into_bytes();
        apply_edits(&mut text, &edits, 0);
        within(CASE_LIMIT, move || {
            if let Ok(config) = InternLM2Config::from_hf_json(&String::from_utf8_lossy(&text)) {
                config.validate().expect("a parsed config is valid");
                assert!(config.num_parameters() < usize::MAX);
                let _ = internlm2::checkpoint::expected_tensors(&config);
            }
        });
    }

    /// A whole single-file checkpoint: config.json values or safetensors header fields set to
    /// hostile values, or bytes of the safetensors file edited.
    #[test]
    fn single_file_checkpoints_load_or_fail_typed(
        config_edits in proptest::collection::vec(json_edit(), 0..2),
        header_edits in proptest::collection::vec(json_edit(), 0..3),
        edits in proptest::collection::vec(byte_edit(), 0..4),
    ) {
        let mut files = seeds().single.clone();
        for (path, value) in config_edits {
            common::edit_json_file(&mut files, "config.json", &path, value);
        }
        for (path, value) in header_edits {
            common::edit_json_file(&mut files, "model.safetensors", &path, value);
        }
        edit_file(&mut files, "model.safetensors", &edits, 4096);
        load_files(files);
    }

    /// A sharded checkpoint: the index's weight map edited (shard names, tensor names), shard
    /// bytes edited.
    #[test]
    fn sharded_checkpoints_load_or_fail_typed(
        index_edits in proptest::collection::vec(json_edit(), 1..4),
        edits in proptest::collection::vec(byte_edit(), 0..3),
        shard in 0usize..8,
    ) {
        let mut files = seeds().sharded.clone();
        for (path, value) in index_edits {
            common::edit_json_file(&mut files, "model.safetensors.index.json", &path, value);
        }
        let shards: Vec<String> = files
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        let target = shards[shard % shards.len()].clone();
        edit_file(&mut files, &target, &edits, 2048);
        load_files(files);
    }

    /// tokenizer.model: byte edits of a small BPE model (with a precompiled charsmap half the
    /// time); a model that loads encodes and decodes text, and every id it returns decodes.
    #[test]
    fn tokenizer_model_loads_or_fails_typed(
        edits in proptest::collection::vec(byte_edit(), 1..6),
        with_charsmap in any::<bool>(),
        text in "[abchelo你好 x<|>_\\n▁]{0,24}",
    ) {
        let map = common::small_charsmap();
        let mut bytes = common::sentencepiece_model(
            &common::small_vocab(),
            with_charsmap.then_some(map.as_slice()),
        );
        apply_edits(&mut bytes, &edits, 0);
        within(CASE_LIMIT, move || {
            if let Ok(tokenizer) = Tokenizer::from_sentencepiece_bytes(&bytes, "mutated") {
                exercise(&tokenizer, &text, true);
            }
        });
    }

    /// tokenizer.json: JSON edits and byte edits of the small model saved as JSON.
    #[test]
    fn tokenizer_json_loads_or_fails_typed(
        json in proptest::collection::vec(json_edit(), 0..3),
        edits in proptest::collection::vec(byte_edit(), 0..3),
        text in "[abchelo你好 x<|>_\\n▁]{0,24}",
    ) {
        let mut value: serde_json::Value = serde_json::from_slice(tokenizer_json()).unwrap();
        for (path, new) in json {
            common::mutate_json(&mut value, &path, new);
        }
        let mut bytes = value.to_string().into_bytes();
        apply_edits(&mut bytes, &edits, 0);
        within(CASE_LIMIT, move || {
            if let Ok(tokenizer) = Tokenizer::from_json_bytes(&bytes, "mutated") {
                exercise(&tokenizer, &text, false);
            }
        });
    }
}

/// The small model as a `tokenizer.json`.
fn tokenizer_json() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| {
        let map = common::small_charsmap();
        let model = common::sentencepiece_model(&common::small_vocab(), Some(&map));
        let tokenizer = Tokenizer::from_sentencepiece_bytes(&model, "small").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tokenizer.save_json(&path).unwrap();
        std::fs::read(path).unwrap()
    })
}

/// A `Strip` decoder that cuts more characters than a token has (the `tokenizers` library
/// subtracts past zero there): decoding gives a typed result, never a panic.
#[test]
fn a_strip_decoder_longer_than_its_tokens_decodes_typed() {
    let mut json: serde_json::Value = serde_json::from_slice(tokenizer_json()).unwrap();
    json["decoder"] = serde_json::json!({"type": "Strip", "content": "x", "start": 0, "stop": 64});
    let bytes = serde_json::to_vec(&json).unwrap();
    let tokenizer = Tokenizer::from_json_bytes(&bytes, "strip").expect("a valid tokenizer.json");
    // "x" is a one-character piece: cutting 64 trailing "x" from it runs past its start.
    let ids = tokenizer.encode("x", false).unwrap();
    assert!(!ids.is_empty());
    // The library panics on the "x" piece (in debug builds on the subtraction, in release on
    // the index it wraps to): without the guard the panic escapes and fails this test.
    let result = tokenizer.decode(&ids);
    assert!(
        matches!(result, Ok(_) | Err(internlm2::TokenizerError::Backend(_))),
        "{result:?}"
    );
    let mut stream = tokenizer.incremental_decoder();
    for &id in &ids {
        let _ = stream.push(id);
    }
}

/// Encodes, decodes and stream-decodes with a tokenizer that loaded: typed errors only, and
/// (`strict`, SentencePiece models) ids inside the vocabulary always decode.
fn exercise(tokenizer: &Tokenizer, text: &str, strict: bool) {
    let Ok(ids) = tokenizer.encode(text, true) else {
        return;
    };
    let _ = tokenizer.encode_with_offsets(text, false);
    let decoded = tokenizer.decode(&ids);
    let mut stream = tokenizer.incremental_decoder();
    for &id in ids.iter().chain([0, 1, u32::MAX].iter()) {
        let _ = stream.push(id);
    }
    let _ = stream.finish();
    if strict && ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()) {
        decoded.expect("ids inside the vocabulary decode");
    }
    let _ = tokenizer.decode(&[u32::MAX, tokenizer.vocab_size() as u32]);
}
