//! One test per hostile-input defect of issue 16, each written to fail before its fix (a
//! panic, an abort, a hang past its time bound, or a silently accepted file).

mod common;

use std::path::Path;
use std::time::Duration;

use burn::tensor::DType;
use common::{CASE_LIMIT, tiny_config, within, write_checkpoint};
use internlm2::backends::Cpu;
use internlm2::checkpoint::WeightReader;
use internlm2::generate::{GenerationConfig, OverflowPolicy, generate};
use internlm2::sampling::SamplingConfig;
use internlm2::{CheckpointError, GenerateError, InternLM2, InternLM2Config, Tokenizer};

fn load(dir: &Path) -> Result<InternLM2<Cpu>, CheckpointError> {
    InternLM2::load(dir, DType::F32, &Default::default())
}

fn set_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json[key] = value;
    std::fs::write(path, json.to_string()).unwrap();
}

/// The reported abort: `num_hidden_layers` = 2^64 - 1 made `InternLM2Model::from_reader`
/// allocate for that many layers (a capacity-overflow panic; 2^40 layers: an allocation of
/// hundreds of terabytes, i.e. an abort).
#[test]
fn a_huge_layer_count_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &tiny_config(), None);
    for layers in [u64::MAX, 1 << 40, 1 << 20] {
        set_config(dir.path(), "num_hidden_layers", layers.into());
        let path = dir.path().to_path_buf();
        let result = within(CASE_LIMIT, move || load(&path).map(|_| ()));
        assert!(
            matches!(result, Err(CheckpointError::Config(_))),
            "{layers} layers: {result:?}"
        );
    }
}

/// A config within every bound whose tensors the checkpoint does not hold is refused before
/// any tensor is read.
#[test]
fn layers_the_files_do_not_hold_are_missing_tensors() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &tiny_config(), None);
    set_config(dir.path(), "num_hidden_layers", 1000.into());
    assert!(matches!(
        load(dir.path()),
        Err(CheckpointError::MissingTensor { name, .. }) if name.starts_with("model.layers.2.")
    ));
}

/// Sizes whose products overflow `usize` (`V x H`), and values the model cannot compute with.
#[test]
fn overflowing_and_unusable_config_values_are_refused() {
    let base = tiny_config().to_hf_json("float32");
    let with = |pairs: &[(&str, serde_json::Value)]| {
        let mut json: serde_json::Value = serde_json::from_str(&base).unwrap();
        for (key, value) in pairs {
            json[*key] = value.clone();
        }
        json.to_string()
    };
    let big = 1u64 << 34;
    for text in [
        with(&[
            ("vocab_size", big.into()),
            ("hidden_size", big.into()),
            ("num_attention_heads", (big / 8).into()),
            ("num_key_value_heads", (big / 8).into()),
        ]),
        with(&[("rope_theta", 0.5.into())]),
        with(&[("rms_norm_eps", 2.0.into())]),
        with(&[(
            "rope_scaling",
            serde_json::json!({"type": "dynamic", "factor": 1e300}),
        )]),
        with(&[("max_position_embeddings", u64::MAX.into())]),
    ] {
        let result = within(CASE_LIMIT, move || {
            InternLM2Config::from_hf_json(&text).map(|c| c.num_parameters())
        });
        assert!(result.is_err(), "accepted: {result:?}");
    }
}

/// `max_new_tokens = usize::MAX` overflowed `prompt_len + max_new_tokens`: the context check
/// passed and generation ran unbounded.
#[test]
fn max_new_tokens_at_usize_max_is_a_context_overflow() {
    let model: InternLM2<Cpu> = InternLM2::init(&tiny_config(), &Default::default());
    let model = std::sync::Arc::new(model);
    for policy in [OverflowPolicy::Error, OverflowPolicy::ClampNewTokens] {
        let model = model.clone();
        let out = within(CASE_LIMIT, move || {
            let config = GenerationConfig::default()
                .with_sampling(SamplingConfig::greedy())
                .with_max_new_tokens(usize::MAX)
                .with_overflow(policy);
            generate(&model, None, vec![vec![1, 2, 3]], &config, |_| true)
        });
        match policy {
            OverflowPolicy::Error => assert!(
                matches!(
                    out,
                    Err(GenerateError::ContextOverflow {
                        prompt_len: 3,
                        max_new_tokens: usize::MAX,
                        limit: 64
                    })
                ),
                "{out:?}"
            ),
            OverflowPolicy::ClampNewTokens => {
                assert_eq!(out.unwrap()[0].tokens.len(), 61, "clamped to the limit")
            }
        }
    }
}

/// A caller-set limit of `usize::MAX` with a huge `max_new_tokens` preallocated the KV cache
/// for all of them (a capacity-overflow panic) before the first token.
#[test]
fn a_huge_context_limit_allocates_nothing_up_front() {
    let model: InternLM2<Cpu> = InternLM2::init(&tiny_config(), &Default::default());
    let out = within(CASE_LIMIT, move || {
        let config = GenerationConfig::default()
            .with_sampling(SamplingConfig::greedy())
            .with_context_limit(Some(usize::MAX))
            .with_max_new_tokens(usize::MAX - 10);
        let mut seen = 0;
        generate(&model, None, vec![vec![1, 2, 3]], &config, |_| {
            seen += 1;
            seen < 3
        })
    });
    assert_eq!(out.unwrap()[0].tokens.len(), 3);
}

/// A stop string of a megabyte was accepted; holding back its partial matches cost the square
/// of the matched length per token. Stop lists are now bounded (and the hold-back linear).
#[test]
fn an_oversized_stop_string_is_a_typed_error() {
    let model: InternLM2<Cpu> = InternLM2::init(&tiny_config(), &Default::default());
    let pieces = common::small_vocab();
    let tokenizer =
        Tokenizer::from_sentencepiece_bytes(&common::sentencepiece_model(&pieces, None), "small")
            .unwrap();
    let out = within(Duration::from_secs(60), move || {
        let config = GenerationConfig::default()
            .with_sampling(SamplingConfig::greedy())
            .with_max_new_tokens(8)
            .with_stop_strings(vec!["a".repeat(1 << 20)]);
        generate(
            &model,
            Some(&tokenizer),
            vec![vec![1, 2, 3]],
            &config,
            |_| true,
        )
    });
    assert!(
        matches!(out, Err(GenerateError::InvalidSampling { .. })),
        "{out:?}"
    );
}

/// Safetensors `data_offsets` that add up to near `u64::MAX`: `safetensors` adds them to the
/// header length unchecked (an overflow panic).
#[test]
fn safetensors_offsets_near_u64_max_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let chunk: u64 = (1 << 61) - 1;
    let mut header = serde_json::Map::new();
    for i in 0..8u64 {
        header.insert(
            format!("t{i}"),
            serde_json::json!({"dtype": "U8", "shape": [chunk], "data_offsets": [i * chunk, (i + 1) * chunk]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    let path = dir.path().to_path_buf();
    let result = within(CASE_LIMIT, move || WeightReader::open(&path).map(|_| ()));
    assert!(
        matches!(result, Err(CheckpointError::Corrupt { .. })),
        "{result:?}"
    );
}

/// A shard index whose shard names leave the model directory read files elsewhere.
#[test]
fn shard_names_outside_the_directory_are_bad_indexes() {
    let root = tempfile::tempdir().unwrap();
    let other = root.path().join("other");
    let model = root.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    write_checkpoint(&other, &tiny_config(), None);
    std::fs::copy(other.join("config.json"), model.join("config.json")).unwrap();
    let elsewhere = other.join("model.safetensors");
    for shard in [
        "../other/model.safetensors".to_string(),
        elsewhere.display().to_string(),
    ] {
        let names = internlm2::checkpoint::expected_tensors(&tiny_config());
        let map: serde_json::Map<String, serde_json::Value> = names
            .into_iter()
            .map(|(name, _)| (name, serde_json::json!(shard)))
            .collect();
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(
            model.join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let result = load(&model);
        assert!(
            matches!(result, Err(CheckpointError::BadIndex { .. })),
            "{shard}: {result:?}"
        );
    }
}

/// A `tokenizer.model` with a one-megabyte piece: building the BPE merges is quadratic in a
/// piece's length (hours).
#[test]
fn a_huge_tokenizer_piece_is_refused_quickly() {
    let mut pieces = common::small_vocab();
    pieces.push(("a".repeat(1 << 20), common::NORMAL));
    let bytes = common::sentencepiece_model(&pieces, None);
    let result = within(CASE_LIMIT, move || {
        Tokenizer::from_sentencepiece_bytes(&bytes, "huge piece").map(|_| ())
    });
    assert!(result.is_err());
}

/// A `precompiled_charsmap` whose trie points outside itself: `spm_precompiled` indexes the
/// array unchecked when text is encoded (an index-out-of-bounds panic at encode time).
#[test]
fn a_charsmap_pointing_outside_its_trie_is_refused() {
    let pieces = common::small_vocab();
    let mut map = common::small_charsmap();
    // The unit of byte `a` (slot 256 ^ 0x61): an offset far past the 512 units.
    let slot = 4 + 4 * (256 ^ 0x61);
    let unit = (1u32 << 20 << 10) | (1 << 8) | 0x61;
    map[slot..slot + 4].copy_from_slice(&unit.to_le_bytes());
    let bytes = common::sentencepiece_model(&pieces, Some(&map));
    within(CASE_LIMIT, move || {
        if let Ok(tokenizer) = Tokenizer::from_sentencepiece_bytes(&bytes, "bad charsmap") {
            let _ = tokenizer.encode("abc", true);
        }
    });
}

/// A valid charsmap is accepted and applied (`a` -> nothing, `b` -> `xy`).
#[test]
fn a_valid_charsmap_normalises_as_its_trie_says() {
    let pieces = common::small_vocab();
    let plain =
        Tokenizer::from_sentencepiece_bytes(&common::sentencepiece_model(&pieces, None), "plain")
            .unwrap();
    let map = common::small_charsmap();
    let mapped = Tokenizer::from_sentencepiece_bytes(
        &common::sentencepiece_model(&pieces, Some(&map)),
        "charsmap",
    )
    .unwrap();
    for (text, normalised) in [("abc", "xyc"), ("cab", "cxy"), ("hello", "hello")] {
        assert_eq!(
            mapped.encode(text, false).unwrap(),
            plain.encode(normalised, false).unwrap(),
            "{text}"
        );
    }
}

/// A `tokenizer.json` whose decoder rewrites across tokens (`Replace("ab", "é")` after
/// `Fuse`): the streaming decoder sliced the longer text at the prefix's byte length, inside
/// a character (a panic).
#[test]
fn the_streaming_decoder_survives_decoders_that_rewrite_across_tokens() {
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Fuse"},
            {"type": "Replace", "pattern": {"String": "ab"}, "content": "é"}
        ]},
        "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "c": 2, "<unk>": 3},
                  "unk_token": "<unk>"}
    });
    let tokenizer = Tokenizer::from_json_bytes(json.to_string().as_bytes(), "replace").unwrap();
    let mut stream = tokenizer.incremental_decoder();
    let mut text = String::new();
    for id in [0, 1, 2, 0, 1] {
        text += &stream.push(id).unwrap();
    }
    text += &stream.finish();
    assert!(text.len() <= tokenizer.decode(&[0, 1, 2, 0, 1]).unwrap().len() + 2);
}
