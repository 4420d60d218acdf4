//! The packed formats against llama.cpp's own implementation: reference vectors written by
//! `scripts/make_quant_vectors.py` with gguf-py 0.19.0 (`gguf.quants`, numpy ports of ggml's
//! block formats) — random Q4_K, Q6_K, Q8_0 and Q4_0 blocks with the values gguf-py decodes
//! them to, and f32 rows with the Q8_0 / Q4_0 bytes gguf-py encodes them to.

use internlm2::quant::encode::quantize;
use internlm2::quant::{PackedWeight, WeightFormat};

fn vectors() -> serde_json::Value {
    let text = include_str!("data/quant_vectors.json");
    serde_json::from_str(text).expect("valid JSON")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn decoders_match_gguf_py() {
    let v = vectors();
    for (name, format) in [
        ("q4_k", WeightFormat::Q4K),
        ("q6_k", WeightFormat::Q6K),
        ("q8_0", WeightFormat::Q8_0),
        ("q4_0", WeightFormat::Q4_0),
    ] {
        let case = &v["decode"][name];
        let bytes = hex(case["bytes"].as_str().unwrap());
        let want = floats(&case["values"]);
        let w = PackedWeight::new(format, 1, want.len(), bytes).unwrap();
        let got = w.dequantize();
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                "{name} value {i}: {g} vs {e}"
            );
        }
    }
}

#[test]
fn q8_0_and_q4_0_encoders_are_bit_identical_to_ggml() {
    let v = vectors();
    for (name, format) in [("q8_0", WeightFormat::Q8_0), ("q4_0", WeightFormat::Q4_0)] {
        let case = &v["encode"][name];
        let (rows, cols) = (
            case["rows"].as_u64().unwrap() as usize,
            case["cols"].as_u64().unwrap() as usize,
        );
        let q = quantize(&floats(&case["input"]), rows, cols, format).unwrap();
        let mut got = Vec::new();
        for (_, _, b) in q.segment_bytes() {
            got.extend_from_slice(b);
        }
        assert_eq!(got, hex(case["bytes"].as_str().unwrap()), "{name}");
    }
}
