//! LMDeploy / AutoAWQ W4A16 checkpoints: a checkpoint written here in AutoAWQ's `gemm` layout
//! (`qweight`/`qzeros` I32 with the nibble order `[0, 2, 4, 6, 1, 3, 5, 7]`, f16 `scales`,
//! groups of 128 inputs) from known 4-bit values loads to exactly the weights
//! `s * (q - z)`: the same logits as a dense model holding those weights. Bad files are typed
//! errors naming the tensor.
//!
//! A property test (issue 16) loads mutated AWQ checkpoints — hostile `quantization_config`
//! values (bits, group size, version, zero point), hostile shapes, dtypes and offsets in the
//! safetensors header, byte edits — as `Ok` or a typed error within a time bound.

#[path = "common/mutate.rs"]
mod mutate;
mod quant_common;
use quant_common as common;

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::{DType, Int, Tensor, TensorData};
use half::f16;
use internlm2::backends::Cpu;
use internlm2::model::linear::Linear;
use internlm2::quant::{LoadOptions, WeightFormat};
use internlm2::{CheckpointError, InternLM2, InternLM2Config};
use mutate::{CASE_LIMIT, apply_edits, byte_edit, cases, edit_json_file, json_edit, within};
use proptest::prelude::*;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// AutoAWQ's `gemm` order: nibble `k` of a word holds output `8w + ORDER[k]`.
const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
const GROUP: usize = 128;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One AWQ layer: packed tensors and the dense `[out, in]` weight they stand for.
struct AwqLayer {
    qweight: Vec<u8>,
    qzeros: Vec<u8>,
    scales: Vec<u8>,
    dense: Vec<f32>,
}

fn pack(values: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    // values: [rows, cols] (cols = outputs) -> I32 [rows, cols / 8]
    let mut out = Vec::with_capacity(rows * cols / 2);
    for r in 0..rows {
        for w in 0..cols / 8 {
            let mut word = 0u32;
            for (k, &o) in ORDER.iter().enumerate() {
                word |= (values[r * cols + 8 * w + o] as u32) << (4 * k);
            }
            out.extend(word.to_le_bytes());
        }
    }
    out
}

fn awq_layer(out: usize, input: usize, rng: &mut Rng) -> AwqLayer {
    let groups = input / GROUP;
    let q: Vec<u8> = (0..input * out).map(|_| (rng.next() % 16) as u8).collect(); // [in, out]
    let z: Vec<u8> = (0..groups * out).map(|_| (rng.next() % 16) as u8).collect(); // [groups, out]
    let s: Vec<f16> = (0..groups * out)
        .map(|_| f16::from_f32(0.002 + (rng.next() % 1000) as f32 * 1e-5))
        .collect();
    let mut dense = vec![0f32; out * input];
    for c in 0..out {
        for i in 0..input {
            let g = i / GROUP;
            dense[c * input + i] =
                s[g * out + c].to_f32() * (q[i * out + c] as f32 - z[g * out + c] as f32);
        }
    }
    AwqLayer {
        qweight: pack(&q, input, out),
        qzeros: pack(&z, groups, out),
        scales: s.iter().flat_map(|v| v.to_le_bytes()).collect(),
        dense,
    }
}

fn config() -> InternLM2Config {
    InternLM2Config::new(200, 128, 256, 2, 4, 2).with_rope_theta(10_000.0)
}

/// Writes an AWQ checkpoint of `model`'s non-linear weights plus AWQ layers, and puts the
/// layers' dense weights into `model`.
fn write_awq(dir: &Path, model: &mut InternLM2<Cpu>, version: &str) {
    let mut rng = Rng(0x5eed);
    let c = model.config().clone();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let f32s = |t: Vec<f32>| t.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let dense_of = |t: Tensor<Cpu, 2>| t.into_data().into_vec::<f32>().unwrap();
    let device = Default::default();
    tensors.push((
        "model.tok_embeddings.weight".into(),
        Dtype::F32,
        vec![c.vocab_size, c.hidden_size],
        f32s(dense_of(model.model.tok_embeddings.weight.val())),
    ));
    for (l, layer) in model.model.layers.iter_mut().enumerate() {
        let p = format!("model.layers.{l}");
        for (name, norm) in [
            ("attention_norm", &layer.attention_norm),
            ("ffn_norm", &layer.ffn_norm),
        ] {
            let v = norm.weight.val().into_data().into_vec::<f32>().unwrap();
            tensors.push((
                format!("{p}.{name}.weight"),
                Dtype::F32,
                vec![v.len()],
                f32s(v),
            ));
        }
        let linears: [(&str, &mut Linear<Cpu>); 5] = [
            ("attention.wqkv", &mut layer.attention.wqkv),
            ("attention.wo", &mut layer.attention.wo),
            ("feed_forward.w1", &mut layer.feed_forward.w1),
            ("feed_forward.w3", &mut layer.feed_forward.w3),
            ("feed_forward.w2", &mut layer.feed_forward.w2),
        ];
        for (name, linear) in linears {
            let [out, input] = linear.dims();
            let awq = awq_layer(out, input, &mut rng);
            tensors.push((
                format!("{p}.{name}.qweight"),
                Dtype::I32,
                vec![input, out / 8],
                awq.qweight,
            ));
            tensors.push((
                format!("{p}.{name}.qzeros"),
                Dtype::I32,
                vec![input / GROUP, out / 8],
                awq.qzeros,
            ));
            tensors.push((
                format!("{p}.{name}.scales"),
                Dtype::F16,
                vec![input / GROUP, out],
                awq.scales,
            ));
            let w = Tensor::<Cpu, 2>::from_data(TensorData::new(awq.dense, [out, input]), &device);
            linear.weight = Param::from_tensor(w);
        }
    }
    let norm = model
        .model
        .norm
        .weight
        .val()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    tensors.push((
        "model.norm.weight".into(),
        Dtype::F32,
        vec![norm.len()],
        f32s(norm),
    ));
    let head = dense_of(model.output.as_ref().unwrap().weight.val());
    tensors.push((
        "output.weight".into(),
        Dtype::F32,
        vec![c.vocab_size, c.hidden_size],
        f32s(head),
    ));

    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, Some(meta)).unwrap(),
    )
    .unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&c.to_hf_json("float16")).unwrap();
    json["quantization_config"] = serde_json::json!({
        "quant_method": "awq", "version": version, "bits": 4, "group_size": 128, "zero_point": true
    });
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
}

fn ids() -> Tensor<Cpu, 2, Int> {
    Tensor::from_data(
        TensorData::new(
            (0..24i64).map(|i| (i * 37) % 200).collect::<Vec<_>>(),
            [2, 12],
        ),
        &Default::default(),
    )
}

#[test]
fn awq_checkpoints_load_to_their_dequantized_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut dense = InternLM2::<Cpu>::init(&config(), &Default::default());
    write_awq(dir.path(), &mut dense, "gemm");
    let model = InternLM2::<Cpu>::load_with(
        dir.path(),
        &LoadOptions::new(DType::F32),
        &Default::default(),
    )
    .unwrap();
    let layers = model.packed_layers();
    assert_eq!(layers.len(), 10);
    assert!(layers.iter().all(|(_, f)| *f == WeightFormat::Awq4));
    // Weight by weight: exactly s * (q - z).
    let got = model.model.layers[1]
        .feed_forward
        .w2
        .dense_weight(DType::F32)
        .into_data();
    let want = dense.model.layers[1]
        .feed_forward
        .w2
        .weight
        .val()
        .into_data();
    assert_eq!(got, want);
    // Decoding (fused mat-vec) and prefill (panel GEMM) against the dense model.
    for ids in [ids(), ids().slice([0..1, 0..1])] {
        let a = model
            .forward(ids.clone())
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let b = dense.forward(ids).into_data().into_vec::<f32>().unwrap();
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "{err}");
    }
}

#[test]
fn bad_awq_checkpoints_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut dense = InternLM2::<Cpu>::init(&config(), &Default::default());
    write_awq(dir.path(), &mut dense, "gemv");
    let err = InternLM2::<Cpu>::load_with(dir.path(), &LoadOptions::default(), &Default::default())
        .unwrap_err();
    assert!(matches!(err, CheckpointError::Unsupported { .. }), "{err}");

    // A qweight whose shape disagrees with config.json names the tensor.
    write_awq(dir.path(), &mut dense, "gemm");
    let path = dir.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["intermediate_size"] = serde_json::json!(384);
    std::fs::write(&path, json.to_string()).unwrap();
    let err = InternLM2::<Cpu>::load_with(dir.path(), &LoadOptions::default(), &Default::default())
        .unwrap_err();
    assert!(
        err.to_string().contains("model.layers.0.feed_forward.w1"),
        "{err}"
    );
}

/// The seed AWQ checkpoint's files, written once.
fn awq_seed() -> &'static [(String, Vec<u8>)] {
    static SEED: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    SEED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut dense = InternLM2::<Cpu>::init(&config(), &Default::default());
        write_awq(dir.path(), &mut dense, "gemm");
        mutate::read_dir_files(dir.path())
    })
}

proptest! {
    #![proptest_config(cases(600))]

    /// Hostile AWQ checkpoints load as `Ok` or a typed error in time; a model that loads
    /// agrees with its config and runs.
    #[test]
    fn awq_checkpoints_load_or_fail_typed(
        quant in proptest::collection::vec(json_edit(), 0..3),
        header in proptest::collection::vec(json_edit(), 0..3),
        edits in proptest::collection::vec(byte_edit(), 0..3),
    ) {
        let mut files = awq_seed().to_vec();
        for (path, value) in quant {
            // Edits inside `quantization_config` (path [k] picks its k-th field).
            for (name, bytes) in files.iter_mut() {
                if name == "config.json" {
                    let mut json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                    mutate::mutate_json(&mut json["quantization_config"], &path, value.clone());
                    *bytes = json.to_string().into_bytes();
                }
            }
        }
        for (path, value) in header {
            edit_json_file(&mut files, "model.safetensors", &path, value);
        }
        for (name, bytes) in files.iter_mut() {
            if name == "model.safetensors" {
                apply_edits(bytes, &edits, 8192);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let path = dir.path().to_path_buf();
        within(CASE_LIMIT, move || {
            let options = LoadOptions::new(DType::F32);
            if let Ok(model) = InternLM2::<Cpu>::load_with(&path, &options, &Default::default()) {
                common::check_loaded_model(&model);
            }
        });
    }
}
