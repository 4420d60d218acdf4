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

/// Writes a few documents in the format `name` implies and returns the file's bytes.
fn document_file(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    let mut writer = internlm2_datasets::io::DocumentWriter::create(&path).unwrap();
    for i in 0..12 {
        let doc = internlm2_datasets::Document::new(format!("document {i}, {}", "x".repeat(i * 7)))
            .with_id(format!("d{i}"));
        writer.write(&doc).unwrap();
    }
    writer.finish().unwrap();
    std::fs::read(&path).unwrap()
}

/// Reads at most `cap` items of `path`: (items, errors).
fn drain(path: &Path, cap: usize) -> (usize, usize) {
    let reader = read_documents(path).unwrap();
    let items: Vec<_> = reader.take(cap).collect();
    (items.len(), items.iter().filter(|r| r.is_err()).count())
}

/// A corrupt gzip stream (byte 10, the first deflate byte, set to 0: a stored block whose
/// lengths disagree) made the JSONL reader return the same I/O error on every call, as
/// "not valid UTF-8" records: a caller that skips bad records looped forever. The error now
/// ends the stream.
#[test]
fn a_corrupt_gzip_stream_ends_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = document_file(dir.path(), "seed.jsonl.gz");
    bytes[10] = 0;
    let path = dir.path().join("corrupt.jsonl.gz");
    std::fs::write(&path, bytes).unwrap();
    let (items, errors) = drain(&path, 1000);
    assert!(items < 1000, "the reader did not end");
    assert_eq!(errors, 1);
    let mut reader = read_documents(&path).unwrap();
    assert!(matches!(reader.next(), Some(Err(DataError::Io { .. }))));
    assert!(reader.next().is_none());
}

/// Corrupt Parquet files: a column chunk with a negative offset made arrow-rs panic
/// ("column start and length should not be negative"), a corrupt page made it panic while
/// decoding ("offset + len out of bounds"), and a corrupt page's error repeated forever. Every
/// byte of a small file set to 0 in turn: arrow-rs alone panics on some of these files (shown
/// here), our reader returns typed errors on all of them and its stream ends.
#[test]
fn corrupt_parquet_files_are_typed_errors_and_end_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let seed = document_file(dir.path(), "seed.parquet");
    let path = dir.path().join("corrupt.parquet");
    let mut arrow_panics = 0;
    for at in 0..seed.len() {
        let mut bytes = seed.clone();
        bytes[at] = 0;
        std::fs::write(&path, &bytes).unwrap();
        let raw = std::panic::catch_unwind(|| {
            let file = std::fs::File::open(&path).unwrap();
            let Ok(builder) =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            else {
                return;
            };
            if let Ok(reader) = builder.build() {
                reader.take(1000).for_each(drop);
            }
        });
        arrow_panics += usize::from(raw.is_err());
        if read_documents(&path).is_ok() {
            let (items, _) = drain(&path, 1000);
            assert!(items < 1000, "byte {at} = 0: the reader did not end");
        }
    }
    assert!(arrow_panics > 0, "no input made arrow-rs panic");
}
