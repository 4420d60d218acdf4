//! Shared helpers of the hostile-input tests: tiny checkpoints written on the fly and a small
//! SentencePiece model encoded by hand; the mutators and the time bound are in [`mutate`].
#![allow(dead_code)]

pub mod mutate;
pub mod requests;

use std::path::{Path, PathBuf};

use internlm2::backends::Cpu;
use internlm2::checkpoint::{SaveDtype, SaveOptions};
use internlm2::{InternLM2, InternLM2Config};
pub use mutate::*;

/// A tiny InternLM2 shape: vocab 320, width 16, 2 layers, 2 heads / 1 KV head, 64 positions.
pub fn tiny_config() -> InternLM2Config {
    InternLM2Config::new(320, 16, 32, 2, 2, 1)
        .with_max_position_embeddings(64)
        .with_rope_theta(10_000.0)
}

/// A random tiny model saved as a HuggingFace directory (f32, one file or shards).
pub fn write_checkpoint(dir: &Path, config: &InternLM2Config, max_shard_bytes: Option<usize>) {
    let model: InternLM2<Cpu> = InternLM2::init(config, &Default::default());
    let mut options = SaveOptions::default().with_dtype(SaveDtype::F32);
    if let Some(bytes) = max_shard_bytes {
        options = options.with_max_shard_bytes(bytes);
    }
    model.save(dir, &options).expect("save the tiny model");
}

/// `$INTERNLM2_FIXTURES`, or `../shared/fixtures` beside the workspace.
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

// --- A SentencePiece `tokenizer.model`, encoded by hand (field numbers of
// --- sentencepiece_model.proto).

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_f32(out: &mut Vec<u8>, field: u64, v: f32) {
    varint(out, field << 3 | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

/// SentencePiece piece types.
pub const NORMAL: u64 = 1;
/// `<unk>`.
pub const UNKNOWN: u64 = 2;
/// `<s>`, `</s>`.
pub const CONTROL: u64 = 3;
/// Matched atomically.
pub const USER_DEFINED: u64 = 4;
/// `<0xXX>`.
pub const BYTE: u64 = 6;

/// The bytes of a BPE `ModelProto` with these pieces (score `-id`), byte fallback on.
pub fn sentencepiece_model(pieces: &[(String, u64)], charsmap: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, (text, kind)) in pieces.iter().enumerate() {
        let mut piece = Vec::new();
        field_bytes(&mut piece, 1, text.as_bytes());
        field_f32(&mut piece, 2, -(id as f32));
        field_varint(&mut piece, 3, *kind);
        field_bytes(&mut out, 1, &piece);
    }
    let mut trainer = Vec::new();
    field_varint(&mut trainer, 3, 2); // model_type BPE
    field_varint(&mut trainer, 35, 1); // byte_fallback
    field_bytes(&mut out, 2, &trainer);
    let mut normalizer = Vec::new();
    field_bytes(&mut normalizer, 1, b"identity");
    if let Some(map) = charsmap {
        field_bytes(&mut normalizer, 2, map);
    }
    field_varint(&mut normalizer, 3, 1); // add_dummy_prefix
    field_varint(&mut normalizer, 4, 0); // remove_extra_whitespaces
    field_varint(&mut normalizer, 5, 1); // escape_whitespaces
    field_bytes(&mut out, 3, &normalizer);
    out
}

/// The pieces of a small InternLM2-like vocabulary: `<unk>`, `<s>`, `</s>`, 256 byte pieces,
/// a few merges, and the six chat tokens (290 pieces).
pub fn small_vocab() -> Vec<(String, u64)> {
    let mut pieces = vec![
        ("<unk>".to_string(), UNKNOWN),
        ("<s>".to_string(), CONTROL),
        ("</s>".to_string(), CONTROL),
    ];
    pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), BYTE)));
    for merge in [
        "▁",
        "a",
        "b",
        "c",
        "e",
        "h",
        "l",
        "o",
        "x",
        "y",
        "▁a",
        "ab",
        "abc",
        "▁ab",
        "he",
        "ll",
        "hell",
        "hello",
        "▁hello",
        "你",
        "好",
        "你好",
        "▁▁",
        "▁▁▁▁",
    ] {
        pieces.push((merge.to_string(), NORMAL));
    }
    for chat in [
        "<|plugin|>",
        "<|interpreter|>",
        "<|action_end|>",
        "<|action_start|>",
        "<|im_end|>",
        "<|im_start|>",
    ] {
        pieces.push((chat.to_string(), USER_DEFINED));
    }
    pieces
}

/// A valid `precompiled_charsmap` (Darts-clone double array + replacement text) that maps
/// `a` to nothing and `b` to `xy`.
pub fn small_charsmap() -> Vec<u8> {
    let mut units = vec![0u32; 512];
    units[0] = 256 << 10; // the root's children live at 256 ^ byte
    let leaf = |byte: u32| (1 << 10) | (1 << 8) | byte; // offset 1, leaf, label
    units[256 ^ 0x61] = leaf(0x61);
    units[(256 ^ 0x61) ^ 1] = 0; // value: replacement at byte 0 ("")
    units[256 ^ 0x62] = leaf(0x62);
    units[(256 ^ 0x62) ^ 1] = 1; // value: replacement at byte 1 ("xy")
    let mut map = Vec::new();
    map.extend_from_slice(&((units.len() * 4) as u32).to_le_bytes());
    for u in units {
        map.extend_from_slice(&u.to_le_bytes());
    }
    map.extend_from_slice(b"\0xy\0");
    map
}
