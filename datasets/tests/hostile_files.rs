//! Property tests (issue 16): mutated bytes of every file format the data pipeline reads —
//! JSONL (plain, gzip, zstd), Parquet, token shards (index JSON, `.tokens`, `.docs`) and MinHash
//! signature files — must read as `Ok` or a typed error, never panic, abort or run past the
//! per-case time bound; what opens must also read to the end (every row, document, record).
//! Seeds are valid files written by the crate's own writers; signature files are also mutated
//! with their checksum recomputed, so that the record parser itself is exercised.
//!
//! `HOSTILE_CASES=n` overrides the number of cases of every property.

#[path = "../../internlm2/tests/common/mutate.rs"]
mod mutate;

use std::path::Path;
use std::sync::OnceLock;

use burn::data::dataset::Dataset;
use internlm2_datasets::Document;
use internlm2_datasets::dedup::{DedupConfig, SignatureFile, merge_signatures, write_signatures};
use internlm2_datasets::io::{DocumentWriter, read_documents};
use internlm2_datasets::tokenize::{PackConfig, ShardWriter, TokenDtype, TokenShards, VocabInfo};
use mutate::{CASE_LIMIT, apply_edits, byte_edit, cases, json_edit, within};
use proptest::prelude::*;

/// Most items read from one mutated file (a mutation can make a file hold many records).
const MAX_ITEMS: usize = 100_000;

fn sample_documents() -> Vec<Document> {
    (0..12)
        .map(|i| {
            Document::new(format!(
                "document {i}: the cat sat on the mat, 你好 {}",
                "x".repeat(i * 7)
            ))
            .with_id(format!("d{i}"))
            .with_timestamp(i as i64)
            .with_meta("score", i as f64 / 3.0)
        })
        .collect()
}

/// The bytes of the sample documents written in each format, by extension.
fn document_seeds() -> &'static Vec<(&'static str, Vec<u8>)> {
    static SEEDS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"]
            .into_iter()
            .map(|ext| {
                let path = dir.path().join(format!("seed.{ext}"));
                let mut writer = DocumentWriter::create(&path).unwrap();
                for doc in sample_documents() {
                    writer.write(&doc).unwrap();
                }
                writer.finish().unwrap();
                (ext, std::fs::read(&path).unwrap())
            })
            .collect()
    })
}

/// The files of a small token shard: two parts, a document across the part boundary.
fn shard_seed(dtype: TokenDtype) -> Vec<(String, Vec<u8>)> {
    static SEEDS: OnceLock<[Vec<(String, Vec<u8>)>; 2]> = OnceLock::new();
    let seeds = SEEDS.get_or_init(|| {
        [
            write_shard_seed(TokenDtype::U16),
            write_shard_seed(TokenDtype::U32),
        ]
    });
    seeds[usize::from(dtype == TokenDtype::U32)].clone()
}

fn write_shard_seed(dtype: TokenDtype) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let vocab = VocabInfo {
        vocab_size: 100,
        bos_id: Some(1),
        eos_id: Some(2),
    };
    let config = PackConfig::default()
        .with_seq_len(4)
        .with_dtype(dtype)
        .with_rows_per_file(Some(3));
    let mut writer = ShardWriter::create(dir.path(), "s", &config, vocab).unwrap();
    for doc in [
        &[10u32, 11, 12][..],
        &[20, 21, 22, 23, 24, 25, 26, 27, 28],
        &[30],
        &[40, 41],
    ] {
        writer.push_document(doc).unwrap();
    }
    writer.finish().unwrap();
    mutate::read_dir_files(dir.path())
}

/// A signature file of the sample documents.
fn signature_seed() -> &'static Vec<u8> {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.minhash");
        write_signatures(&signature_config(), sample_documents().iter(), &path).unwrap();
        std::fs::read(&path).unwrap()
    })
}

fn signature_config() -> DedupConfig {
    DedupConfig::default()
        .with_permutations(16)
        .with_banding(4, 4)
}

/// Reads every document of a file; typed errors only, and the stream ends (a reader that
/// repeats an error forever hangs every caller that skips bad records).
fn read_all(path: &Path) {
    if let Ok(reader) = read_documents(path) {
        let items = reader.take(MAX_ITEMS).count();
        assert!(items < MAX_ITEMS, "the reader did not end");
    }
}

/// Opens a folder of token shards and reads every row and document.
fn read_shards(dir: &Path) {
    let Ok(shards) = TokenShards::open(dir) else {
        return;
    };
    let _ = shards.verify();
    for i in 0..shards.len().min(MAX_ITEMS) {
        let row = shards.get(i).expect("rows below len() exist");
        assert_eq!(row.tokens.len(), shards.seq_len() + 1);
        assert!(row.valid_len <= row.tokens.len());
    }
    assert!(shards.get(shards.len()).is_none());
    for i in 0..shards.documents().min(MAX_ITEMS as u64) {
        assert!(shards.document_tokens(i).is_some());
    }
    assert!(shards.document_tokens(shards.documents()).is_none());
}

/// Rewrites a signature file's body length and checksum to match its (mutated) body.
fn fix_signature_header(bytes: &mut [u8]) {
    if bytes.len() < 64 {
        return;
    }
    let body_len = (bytes.len() - 64) as u64;
    let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[64..]);
    bytes[32..40].copy_from_slice(&body_len.to_le_bytes());
    bytes[40..48].copy_from_slice(&checksum.to_le_bytes());
}

proptest! {
    #![proptest_config(cases(2000))]

    /// JSONL (plain, gzip, zstd) and Parquet with edited bytes.
    #[test]
    fn document_files_read_or_fail_typed(
        format in 0usize..4,
        edits in proptest::collection::vec(byte_edit(), 1..6),
    ) {
        let (ext, seed) = &document_seeds()[format];
        let mut bytes = seed.clone();
        // Compressed and Parquet files keep their structure in the first and last bytes.
        let focus = if format == 0 { 0 } else { 64 };
        apply_edits(&mut bytes, &edits, focus);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("mutated.{ext}"));
        std::fs::write(&path, bytes).unwrap();
        within(CASE_LIMIT, move || read_all(&path));
    }

    /// Parquet with a few bytes set anywhere (pages, page headers, metadata alike).
    #[test]
    fn parquet_files_read_or_fail_typed(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = document_seeds()[3].1.clone();
        let len = bytes.len();
        for (at, byte) in edits {
            bytes[at % len] = byte;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.parquet");
        std::fs::write(&path, bytes).unwrap();
        within(CASE_LIMIT, move || read_all(&path));
    }

    /// Parquet footers: the last bytes (metadata length, thrift metadata) edited.
    #[test]
    fn parquet_footers_read_or_fail_typed(
        edits in proptest::collection::vec(byte_edit(), 1..4),
    ) {
        let seed = &document_seeds()[3].1;
        let cut = seed.len().saturating_sub(512);
        let (body, tail) = seed.split_at(cut);
        let mut tail = tail.to_vec();
        apply_edits(&mut tail, &edits, 0);
        let mut bytes = body.to_vec();
        bytes.extend_from_slice(&tail);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.parquet");
        std::fs::write(&path, bytes).unwrap();
        within(CASE_LIMIT, move || read_all(&path));
    }

    /// Token shards: index fields set to hostile values, or bytes of a part edited.
    #[test]
    fn token_shards_open_or_fail_typed(
        u16_tokens in any::<bool>(),
        index_edits in proptest::collection::vec(json_edit(), 0..3),
        file in 0usize..8,
        edits in proptest::collection::vec(byte_edit(), 0..4),
    ) {
        let mut files = shard_seed(if u16_tokens { TokenDtype::U16 } else { TokenDtype::U32 });
        for (name, bytes) in files.iter_mut() {
            if name.ends_with(".index.json") {
                let mut json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                for (path, value) in &index_edits {
                    mutate::mutate_json(&mut json, path, value.clone());
                }
                *bytes = json.to_string().into_bytes();
            }
        }
        let n = files.len();
        apply_edits(&mut files[file % n].1, &edits, 0);
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let path = dir.path().to_path_buf();
        within(CASE_LIMIT, move || read_shards(&path));
    }

    /// Signature files: edited bytes, with the checksum left stale or recomputed.
    #[test]
    fn signature_files_open_or_fail_typed(
        edits in proptest::collection::vec(byte_edit(), 1..6),
        fix_checksum in any::<bool>(),
    ) {
        let mut bytes = signature_seed().clone();
        apply_edits(&mut bytes, &edits, 64);
        if fix_checksum {
            fix_signature_header(&mut bytes);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.minhash");
        std::fs::write(&path, bytes).unwrap();
        within(CASE_LIMIT, move || {
            if let Ok(file) = SignatureFile::open(&path) {
                for record in file.records().take(MAX_ITEMS) {
                    let _ = record.signature();
                }
                let _ = merge_signatures(&signature_config(), &[path.clone(), path]);
            }
        });
    }
}
