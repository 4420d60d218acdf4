//! One test per hostile-input defect of issue 16 in the data pipeline's readers, each written
//! to fail before its fix.

use std::io::Write;
use std::path::Path;

use internlm2_datasets::DataError;
use internlm2_datasets::io::{JsonlReader, read_documents};
use internlm2_datasets::tokenize::{PackConfig, ShardIndex, ShardWriter, TokenShards, VocabInfo};

/// A valid one-part shard (seq_len 4, u32 tokens), written by the crate.
fn write_shard(dir: &Path) -> serde_json::Value {
    let vocab = VocabInfo {
        vocab_size: 100,
        bos_id: Some(1),
        eos_id: Some(2),
    };
    let config = PackConfig::default().with_seq_len(4);
    let mut writer = ShardWriter::create(dir, "s", &config, vocab).unwrap();
    writer.push_document(&[10, 11, 12, 13, 14, 15]).unwrap();
    writer.finish().unwrap();
    serde_json::from_str(&std::fs::read_to_string(dir.join("s.index.json")).unwrap()).unwrap()
}

/// `rows x seq_len` past `u64::MAX` in an index: the size check multiplied unchecked (an
/// overflow panic).
#[test]
fn an_index_whose_sizes_overflow_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = write_shard(dir.path());
    index["seq_len"] = (1u64 << 23).into();
    index["parts"][0]["rows"] = (1u64 << 45).into();
    index["rows"] = (1u64 << 45).into();
    let path = dir.path().join("s.index.json");
    std::fs::write(&path, index.to_string()).unwrap();
    assert!(matches!(
        ShardIndex::load(&path),
        Err(DataError::Corrupt { .. })
    ));
}

/// An index whose token count times the dtype width wraps around `u64` to the size of a tiny
/// file: the size check passed (in release builds) and reading a row sliced past the map (a
/// panic); in debug builds the multiplication itself panicked.
#[test]
fn an_index_whose_file_size_wraps_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = write_shard(dir.path());
    // seq_len 1, 2^62 rows: 2^62 + 1 stored u32 tokens = 2^64 + 4 bytes, i.e. 4 after wrapping.
    let rows = 1u64 << 62;
    index["seq_len"] = 1.into();
    index["rows"] = rows.into();
    index["tokens"] = (rows + 1).into();
    index["padding"] = 0.into();
    index["documents"] = 1.into();
    let part = &mut index["parts"][0];
    part["rows"] = rows.into();
    part["valid_tokens"] = (rows + 1).into();
    part["segments"] = 1.into();
    std::fs::write(dir.path().join("s.00000.tokens"), [10u8, 0, 0, 0]).unwrap();
    std::fs::write(dir.path().join("s.00000.docs"), 0u64.to_le_bytes()).unwrap();
    std::fs::write(dir.path().join("s.index.json"), index.to_string()).unwrap();
    let opened = TokenShards::open(dir.path());
    assert!(
        matches!(opened, Err(DataError::Corrupt { .. })),
        "{opened:?}"
    );
}

/// A JSONL line longer than the reader's bound (say, a gzip bomb without newlines) is a typed
/// error read in bounded memory, and the reader goes on with the next line. Before, the whole
/// line was held in memory, however long.
#[test]
fn an_overlong_jsonl_line_is_a_bad_record_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "{{\"text\": \"{}\"}}", "a".repeat(5000)).unwrap();
    writeln!(file, "{{\"text\": \"short\"}}").unwrap();
    drop(file);
    let mut reader = JsonlReader::open(&path, internlm2_datasets::io::Compression::None)
        .unwrap()
        .with_max_line_bytes(1000);
    assert!(matches!(
        reader.next(),
        Some(Err(DataError::BadRecord { line: 1, .. }))
    ));
    assert_eq!(reader.next().unwrap().unwrap().text, "short");
    assert!(reader.next().is_none());
    // The default bound lets ordinary long documents through.
    let docs: Vec<_> = read_documents(&path).unwrap().collect();
    assert!(docs.iter().all(Result::is_ok));
}
