//! Packed weights end to end on the reference fixtures: quantize on load for every format
//! (logit error and top-1 agreement against the f32 model, within each format's bound, for
//! prefill-sized and decoding-sized calls, the latter with 8-bit activations), our
//! quantized checkpoint round trip (loads without re-quantizing, identical logits), the typed
//! error for training a quantized model, and the HF save of a quantized model.

mod quant_common;
use quant_common as common;

use burn::tensor::{DType, Int, Tensor, TensorData};
use internlm2::backends::Cpu;
use internlm2::quant::{LoadOptions, QuantConfig, QuantError, WeightFormat, save_quantized};
use internlm2::{CheckpointError, InternLM2};

fn prompt(dir: &std::path::Path) -> Tensor<Cpu, 2, Int> {
    let reference = common::reference(dir);
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "prefill_batch")
        .expect("prefill_batch case");
    let ids = common::ints2(&case["input_ids"]);
    let (b, s) = (ids.len(), ids[0].len());
    let flat: Vec<i64> = ids.into_iter().flatten().collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), &Default::default())
}

fn logits(model: &InternLM2<Cpu>, ids: Tensor<Cpu, 2, Int>) -> (Vec<f32>, usize) {
    let out = model.forward(ids);
    let vocab = out.dims()[2];
    (out.into_data().into_vec::<f32>().unwrap(), vocab)
}

/// (max-abs error relative to the largest reference logit, top-1 agreement).
fn compare(got: &[f32], want: &[f32], vocab: usize) -> (f32, f32) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold(
                (0, f32::MIN),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            )
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

fn load(dir: &std::path::Path, quant: QuantConfig) -> InternLM2<Cpu> {
    let options = LoadOptions::new(DType::F32).with_quant(quant);
    InternLM2::<Cpu>::load_with(dir, &options, &Default::default()).unwrap()
}

/// Bounds on the relative max-abs logit error: a few times what the format's rounding step
/// (relative to a block's largest value: f16 2^-11, bf16 2^-8, Q8_0 1/254, Q4_K about 1/30,
/// Q4_0 1/16) gives through two small random layers; a wrong layout or kernel gives errors of
/// order 1.
const BOUNDS: [(WeightFormat, f32, f32); 5] = [
    (WeightFormat::F16, 0.002, 0.97),
    (WeightFormat::BF16, 0.02, 0.9),
    (WeightFormat::Q8_0, 0.03, 0.9),
    (WeightFormat::Q4K, 0.3, 0.5),
    (WeightFormat::Q4_0, 0.4, 0.5),
];

#[test]
fn quantize_on_load_stays_within_each_formats_error() {
    for dir in common::model_fixtures() {
        let ids = prompt(&dir);
        let reference = InternLM2::<Cpu>::load(&dir, DType::F32, &Default::default()).unwrap();
        let (want, vocab) = logits(&reference, ids.clone());
        for (format, bound, top1) in BOUNDS {
            // The whole model in the format (embedding and head too), to see its own error.
            let q = QuantConfig::new(format)
                .with_embedding(Some(format))
                .with_head(Some(format));
            let model = load(&dir, q);
            assert!(!model.packed_layers().is_empty());
            let (got, _) = logits(&model, ids.clone());
            let (err, agree) = compare(&got, &want, vocab);
            eprintln!(
                "{} {format}: relative max-abs error {err:.5}, top-1 agreement {agree:.3}",
                dir.display()
            );
            assert!(err < bound, "{format}: {err} >= {bound}");
            assert!(agree >= top1, "{format}: top-1 agreement {agree}");
        }
    }
}

/// Decoding-sized calls (up to 16 rows take the CPU mat-vec): with 8-bit activations (on by
/// default; they change results only where the AVX2 integer kernels run) the logits stay within
/// each format's bound of the f32 model, and within a Q8_0-sized step of the same quantized
/// model with f32 activations.
#[test]
fn decoding_with_8_bit_activations_stays_within_each_formats_error() {
    use internlm2::backends::kernels::{int8_activations, set_int8_activations};
    let before = int8_activations();
    for dir in common::model_fixtures() {
        // Two rows of 8 tokens: 16 rows through every linear layer, the mat-vec's most.
        let ids = prompt(&dir).slice([0..2, 0..8]);
        let reference = InternLM2::<Cpu>::load(&dir, DType::F32, &Default::default()).unwrap();
        let (want, vocab) = logits(&reference, ids.clone());
        for (format, bound, top1) in BOUNDS {
            let q = QuantConfig::new(format)
                .with_embedding(Some(format))
                .with_head(Some(format));
            let model = load(&dir, q);
            set_int8_activations(true);
            let (int8, _) = logits(&model, ids.clone());
            set_int8_activations(false);
            let (f32s, _) = logits(&model, ids.clone());
            set_int8_activations(before);
            let (err, agree) = compare(&int8, &want, vocab);
            let (step, _) = compare(&int8, &f32s, vocab);
            let (f32_err, f32_agree) = compare(&f32s, &want, vocab);
            eprintln!(
                "{} {format}: 8-bit activations: error {err:.5} (top-1 {agree:.3}) against f32, \
                 {step:.5} against f32 activations (which give {f32_err:.5}, top-1 {f32_agree:.3})",
                dir.display()
            );
            assert!(err < bound, "{format}: {err} >= {bound}");
            assert!(agree >= top1, "{format}: top-1 agreement {agree}");
            assert!(
                step < 0.03,
                "{format}: 8-bit activations moved the logits by {step}"
            );
        }
    }
}

#[test]
fn four_bit_bodies_keep_q8_0_embeddings_and_head_by_default() {
    let dir = &common::model_fixtures()[0];
    let model = load(dir, QuantConfig::new(WeightFormat::Q4_0));
    let layers = model.packed_layers();
    let format_of = |name: &str| layers.iter().find(|(n, _)| n == name).map(|(_, f)| *f);
    assert_eq!(
        format_of("model.tok_embeddings.weight"),
        Some(WeightFormat::Q8_0)
    );
    assert_eq!(format_of("output.weight"), Some(WeightFormat::Q8_0));
    assert_eq!(
        format_of("model.layers.0.attention.wqkv.weight"),
        Some(WeightFormat::Q4_0)
    );
    // w2's rows (intermediate 176) are not whole 32-value blocks: f16, as llama.cpp falls back.
    assert_eq!(
        format_of("model.layers.0.feed_forward.w2.weight"),
        Some(WeightFormat::F16)
    );
}

#[test]
fn quantized_checkpoints_load_without_requantizing() {
    for dir in common::model_fixtures() {
        let ids = prompt(&dir);
        for format in [WeightFormat::Q4K, WeightFormat::Q8_0, WeightFormat::F16] {
            let model = load(&dir, QuantConfig::new(format));
            let out = tempfile::tempdir().unwrap();
            save_quantized(&model, out.path()).unwrap();
            let config: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.path().join("config.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(
                config["quantization_config"]["quant_method"],
                "internlm2-rs"
            );
            let reloaded = InternLM2::<Cpu>::load_with(
                out.path(),
                &LoadOptions::default(),
                &Default::default(),
            )
            .unwrap();
            assert_eq!(reloaded.packed_layers(), model.packed_layers());
            let (a, _) = logits(&model, ids.clone());
            let (b, _) = logits(&reloaded, ids.clone());
            assert_eq!(a, b, "{format}: reloaded logits differ");
            // Smaller than the f32 checkpoint it came from.
            let size = std::fs::metadata(out.path().join("model.safetensors"))
                .unwrap()
                .len();
            let params = model.config().num_parameters() as u64;
            assert!(
                size < params * 4,
                "{format}: {size} bytes for {params} parameters"
            );
        }
    }
}

#[test]
fn corrupt_quantized_checkpoints_are_typed_errors() {
    let dir = &common::model_fixtures()[0];
    let model = load(dir, QuantConfig::new(WeightFormat::Q8_0));
    let out = tempfile::tempdir().unwrap();
    save_quantized(&model, out.path()).unwrap();
    let path = out.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // A segment list that claims another format than the bytes hold.
    json["quantization_config"]["tensors"]["model.tok_embeddings.weight"]["segments"][0][0] =
        "q4_0".into();
    std::fs::write(&path, json.to_string()).unwrap();
    let err = InternLM2::<Cpu>::load_with(out.path(), &LoadOptions::default(), &Default::default())
        .unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("model.tok_embeddings.weight"),
        "{err}"
    );
}

#[test]
fn quantized_models_refuse_training_and_save_dequantized() {
    let dir = &common::model_fixtures()[0];
    let dense = InternLM2::<Cpu>::load(dir, DType::F32, &Default::default()).unwrap();
    assert!(dense.check_trainable().is_ok());
    let model = load(dir, QuantConfig::new(WeightFormat::Q8_0));
    assert!(matches!(
        model.check_trainable(),
        Err(QuantError::NotTrainable { .. })
    ));
    // The HF writer stores the dequantized weights: reloading them gives the same model.
    let out = tempfile::tempdir().unwrap();
    model
        .save(
            out.path(),
            &internlm2::checkpoint::SaveOptions::default()
                .with_dtype(internlm2::checkpoint::SaveDtype::F32),
        )
        .unwrap();
    let back = InternLM2::<Cpu>::load(out.path(), DType::F32, &Default::default()).unwrap();
    let ids = prompt(dir);
    let (a, vocab) = logits(&model, ids.clone());
    let (b, _) = logits(&back, ids);
    let (err, _) = compare(&b, &a, vocab);
    assert!(err < 1e-4, "{err}");
}
