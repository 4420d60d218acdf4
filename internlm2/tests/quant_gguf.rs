//! GGUF files made by llama.cpp's converter from the `tiny-internlm2` fixture load to the
//! logits of the safetensors checkpoint, within each format's error.
//!
//! `internlm2/tests/data/gguf/tiny-internlm2-{f16,q8_0}.gguf` were written by `scripts/make_test_gguf.sh`
//! (llama.cpp's `convert_hf_to_gguf.py` from the llama-cpp-python 0.3.36 sdist, gguf-py
//! 0.19.0) from `../shared/fixtures/tiny-internlm2` with the fixture tokenizer. The F16 file
//! holds the bf16 weights almost exactly; in the Q8_0 file the converter fell back to F16 for
//! `ffn_down` (176 inputs are not whole 32-value blocks). The fixture's dynamic-NTK RoPE
//! scaling is lost in GGUF (llama.cpp cannot express it); the prompts used here stay below
//! `max_position_embeddings`, where it does not apply.
//!
//! A property test (issue 16) mutates both files: every integer field of the header (counts,
//! string and array lengths, value types, metadata numbers, tensor dimensions, types and
//! offsets) set to a value that breaks size arithmetic, plus byte edits; opening, reading the
//! config and tokenizer and loading the model give `Ok` or a typed error within a time bound.

mod quant_common;
use quant_common as common;
#[path = "common/mutate.rs"]
mod mutate;

use std::path::PathBuf;

use burn::tensor::{DType, Int, Tensor, TensorData};
use internlm2::backends::Cpu;
use internlm2::checkpoint::gguf::{GgufFile, gguf_config, load_gguf, tokenizer_from_gguf};
use internlm2::quant::{LoadOptions, QuantConfig, WeightFormat};
use internlm2::{CheckpointError, InternLM2, InternLM2Config, Tokenizer};
use mutate::{CASE_LIMIT, apply_edits, byte_edit, cases, extreme_u64, within};
use proptest::prelude::*;

fn gguf(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gguf")
        .join(name)
}

fn fixture() -> PathBuf {
    common::fixtures().join("tiny-internlm2")
}

fn prompt() -> Tensor<Cpu, 2, Int> {
    let reference = common::reference(&fixture());
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "prefill_batch")
        .unwrap();
    let ids = common::ints2(&case["input_ids"]);
    let (b, s) = (ids.len(), ids[0].len());
    Tensor::from_data(
        TensorData::new(ids.into_iter().flatten().collect::<Vec<i64>>(), [b, s]),
        &Default::default(),
    )
}

fn logits(model: &InternLM2<Cpu>) -> (Vec<f32>, usize) {
    let out = model.forward(prompt());
    let vocab = out.dims()[2];
    (out.into_data().into_vec::<f32>().unwrap(), vocab)
}

/// Max-abs error relative to the largest reference logit, and top-1 agreement.
fn compare(got: &[f32], want: &[f32], vocab: usize) -> (f32, f32) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let argmax = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0
    };
    let rows = want.len() / vocab;
    let agree = (0..rows)
        .filter(|&r| {
            argmax(&got[r * vocab..(r + 1) * vocab]) == argmax(&want[r * vocab..(r + 1) * vocab])
        })
        .count();
    (err / scale, agree as f32 / rows as f32)
}

#[test]
fn config_comes_from_the_metadata() {
    let file = GgufFile::open(&gguf("tiny-internlm2-f16.gguf")).unwrap();
    let config = gguf_config(&file).unwrap();
    let hf = InternLM2Config::from_hf_file(fixture().join("config.json")).unwrap();
    assert_eq!(
        (
            config.vocab_size,
            config.hidden_size,
            config.intermediate_size,
            config.num_hidden_layers
        ),
        (
            hf.vocab_size,
            hf.hidden_size,
            hf.intermediate_size,
            hf.num_hidden_layers
        )
    );
    assert_eq!(
        (config.num_attention_heads, config.num_key_value_heads),
        (hf.num_attention_heads, hf.num_key_value_heads)
    );
    assert_eq!(
        (config.rope_theta, config.rms_norm_eps),
        (hf.rope_theta, hf.rms_norm_eps)
    );
    assert_eq!(config.tie_word_embeddings, hf.tie_word_embeddings);
    assert_eq!(config.rope_scaling, None, "GGUF has no dynamic NTK");
}

#[test]
fn gguf_models_give_the_safetensors_logits() {
    let reference = InternLM2::<Cpu>::load(fixture(), DType::F32, &Default::default()).unwrap();
    let (want, vocab) = logits(&reference);
    for (file, bound) in [
        ("tiny-internlm2-f16.gguf", 2e-3),
        ("tiny-internlm2-q8_0.gguf", 3e-2),
    ] {
        let model =
            load_gguf::<Cpu>(&gguf(file), &LoadOptions::default(), &Default::default()).unwrap();
        // Packed tensors are used as stored; the fused wqkv is rebuilt from Q/K/V.
        assert!(!model.packed_layers().is_empty());
        let (got, _) = logits(&model);
        let (err, agree) = compare(&got, &want, vocab);
        eprintln!("{file}: relative max-abs error {err:.6}, top-1 agreement {agree:.3}");
        assert!(err < bound, "{file}: {err}");
        assert!(agree >= 0.95, "{file}: top-1 agreement {agree}");
        // Through load_with and a .gguf path too.
        let again =
            InternLM2::<Cpu>::load_with(gguf(file), &LoadOptions::default(), &Default::default())
                .unwrap();
        assert_eq!(logits(&again).0, got);
    }
}

#[test]
fn dense_gguf_tensors_can_be_quantized_on_load() {
    let options = LoadOptions::default().with_quant(QuantConfig::new(WeightFormat::Q8_0));
    let model = load_gguf::<Cpu>(
        &gguf("tiny-internlm2-f16.gguf"),
        &options,
        &Default::default(),
    )
    .unwrap();
    // F16 tensors stay as stored; nothing is F32 in this file but the norms.
    let layers = model.packed_layers();
    assert!(
        layers
            .iter()
            .any(|(n, f)| n.ends_with("wqkv.weight") && *f == WeightFormat::F16),
        "{layers:?}"
    );
}

#[test]
fn the_tokenizer_comes_from_the_metadata() {
    let from_gguf = tokenizer_from_gguf(&gguf("tiny-internlm2-q8_0.gguf")).unwrap();
    let real = Tokenizer::from_file(common::fixtures().join("tokenizer/tokenizer_internlm2.model"))
        .unwrap();
    // The converter wrote the first `vocab_size` (512) pieces of the real tokenizer.
    assert_eq!(from_gguf.vocab_size(), 512);
    for id in 0..512u32 {
        assert_eq!(
            from_gguf.token_bytes(id).unwrap(),
            real.token_bytes(id).unwrap(),
            "piece {id}"
        );
    }
    assert_eq!(
        (from_gguf.bos_id(), from_gguf.eos_id()),
        (real.bos_id(), real.eos_id())
    );
    // Text made of those pieces encodes the same way (byte fallback for the rest).
    let text = "Hello, world! 1 2 3";
    let a = from_gguf.encode(text, true).unwrap();
    assert_eq!(from_gguf.decode(&a).unwrap(), text);
}

#[test]
fn broken_gguf_files_are_typed_errors_naming_the_tensor() {
    let bytes = std::fs::read(gguf("tiny-internlm2-q8_0.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Truncated: the last tensor's bytes run past the end of the file.
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_gguf::<Cpu>(&cut, &LoadOptions::default(), &Default::default()).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("GGUF tensor `"), "{err}");
    // Not a GGUF file at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf file at all").unwrap();
    assert!(matches!(
        load_gguf::<Cpu>(&junk, &LoadOptions::default(), &Default::default()),
        Err(CheckpointError::Corrupt { .. })
    ));
    // Every prefix of the header is an error, never a panic.
    for len in (0..2000).step_by(37) {
        let p = dir.path().join(format!("p{len}.gguf"));
        std::fs::write(&p, &bytes[..len]).unwrap();
        assert!(load_gguf::<Cpu>(&p, &LoadOptions::default(), &Default::default()).is_err());
    }
}

// --- Property: hostile GGUF headers (issue 16).

/// What an integer field of a GGUF header is, so that the property can pick fields of every
/// kind (a file holds thousands of vocabulary string lengths and only two header counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldKind {
    /// Tensor count, metadata count.
    Count,
    /// A string or array length, a value or array item type.
    Structure,
    /// A metadata number (block count, head counts, sizes, token ids, eps, theta).
    Value,
    /// A tensor's dimension count, dimensions, ggml type or data offset.
    Tensor,
}

/// Byte offset and width of every integer field of a GGUF header, found by walking it the
/// way the format is written (a test-side reader, independent of the SDK's).
fn gguf_fields(bytes: &[u8]) -> Vec<(FieldKind, usize, usize)> {
    use FieldKind::*;
    struct Walk<'a> {
        b: &'a [u8],
        pos: usize,
        out: Vec<(FieldKind, usize, usize)>,
    }
    impl Walk<'_> {
        fn int(&mut self, kind: FieldKind, width: usize) -> u64 {
            let mut v = [0u8; 8];
            v[..width].copy_from_slice(&self.b[self.pos..self.pos + width]);
            self.out.push((kind, self.pos, width));
            self.pos += width;
            u64::from_le_bytes(v)
        }
        fn string(&mut self) {
            let n = self.int(Structure, 8) as usize;
            self.pos += n;
        }
        fn value(&mut self, ty: u64, in_array: bool) {
            // Array items are recorded as values only outside the (long) vocabulary arrays.
            let kind = if in_array { Structure } else { Value };
            match ty {
                0 | 1 | 7 => self.pos += 1,
                2 | 3 => self.pos += 2,
                4 | 5 => {
                    let _ = self.int(kind, 4);
                }
                6 => self.pos += 4,
                8 => self.string(),
                9 => {
                    let item = self.int(Structure, 4);
                    let n = self.int(Structure, 8);
                    for _ in 0..n {
                        if item == 8 {
                            self.pos += 8 + u64::from_le_bytes(
                                self.b[self.pos..self.pos + 8].try_into().unwrap(),
                            ) as usize;
                        } else {
                            self.value(item, true);
                        }
                    }
                }
                10 | 11 => {
                    let _ = self.int(kind, 8);
                }
                12 => self.pos += 8,
                other => panic!("the seed file holds an unknown GGUF type {other}"),
            }
        }
    }
    let mut w = Walk {
        b: bytes,
        pos: 8,
        out: Vec::new(),
    };
    let tensors = w.int(Count, 8);
    let meta = w.int(Count, 8);
    for _ in 0..meta {
        w.string();
        let ty = w.int(Structure, 4);
        w.value(ty, false);
    }
    for _ in 0..tensors {
        w.string();
        let dims = w.int(Tensor, 4);
        for _ in 0..dims {
            let _ = w.int(Tensor, 8);
        }
        let _ = w.int(Tensor, 4);
        let _ = w.int(Tensor, 8);
    }
    w.out
}

/// The two seed files and their header fields.
fn gguf_seeds() -> &'static [(Vec<u8>, Vec<(FieldKind, usize, usize)>)] {
    static SEEDS: std::sync::OnceLock<Vec<(Vec<u8>, Vec<(FieldKind, usize, usize)>)>> =
        std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        ["tiny-internlm2-f16.gguf", "tiny-internlm2-q8_0.gguf"]
            .iter()
            .map(|name| {
                let bytes = std::fs::read(gguf(name)).unwrap();
                let fields = gguf_fields(&bytes);
                (bytes, fields)
            })
            .collect()
    })
}

/// One field edit: which kind, which field of that kind, and the new value (truncated to the
/// field's width).
fn field_edit() -> impl Strategy<Value = (FieldKind, usize, u64)> {
    (
        prop_oneof![
            Just(FieldKind::Count),
            Just(FieldKind::Structure),
            Just(FieldKind::Value),
            Just(FieldKind::Tensor),
        ],
        any::<usize>(),
        prop_oneof![3 => extreme_u64(), 1 => 0u64..16],
    )
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Hostile GGUF headers and bytes: `GgufFile::open`, `gguf_config`, `tokenizer_from_gguf`
    /// and `load_gguf` return `Ok` or a typed error in time, and a model that loads agrees
    /// with its config.
    #[test]
    fn gguf_files_load_or_fail_typed(
        seed in 0usize..2,
        fields in proptest::collection::vec(field_edit(), 0..4),
        edits in proptest::collection::vec(byte_edit(), 0..3),
    ) {
        let (seed_bytes, seed_fields) = &gguf_seeds()[seed];
        let mut bytes = seed_bytes.clone();
        for (kind, pick, value) in fields {
            let of_kind: Vec<_> = seed_fields.iter().filter(|f| f.0 == kind).collect();
            let (_, at, width) = *of_kind[pick % of_kind.len()];
            bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        // Byte edits, half of them inside the header.
        let header_end = seed_fields.last().map_or(0, |f| f.1 + f.2);
        apply_edits(&mut bytes, &edits, header_end);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.gguf");
        std::fs::write(&path, &bytes).unwrap();
        within(CASE_LIMIT, move || {
            let Ok(file) = GgufFile::open(&path) else { return };
            if let Ok(config) = gguf_config(&file) {
                config.validate().expect("a config read from GGUF is valid");
            }
            drop(file);
            if let Ok(tokenizer) = tokenizer_from_gguf(&path) {
                let ids = tokenizer.encode("Hello, world! 你好", true);
                if let Ok(ids) = ids {
                    let _ = tokenizer.decode(&ids);
                }
                let _ = tokenizer.decode(&[u32::MAX]);
            }
            if let Ok(model) = load_gguf::<Cpu>(&path, &LoadOptions::default(), &Default::default()) {
                common::check_loaded_model(&model);
            }
        });
    }
}
