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

mod quant_common;
use quant_common as common;

use std::path::PathBuf;

use burn::tensor::{DType, Int, Tensor, TensorData};
use internlm2::backends::Cpu;
use internlm2::checkpoint::gguf::{GgufFile, gguf_config, load_gguf, tokenizer_from_gguf};
use internlm2::quant::{LoadOptions, QuantConfig, WeightFormat};
use internlm2::{CheckpointError, InternLM2, InternLM2Config, Tokenizer};

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
