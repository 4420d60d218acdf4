//! Tokenise-and-pack: packing arithmetic checked by hand, documents longer than a row, EOS
//! separators, split files, the memory-mapped round trip, the burn `Dataset`, typed errors on
//! damaged files, restart, and agreement with `internlm2::data::Packer`.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use burn::data::dataset::Dataset;
use internlm2::Tokenizer;
use internlm2::data::{DocumentSource, InMemoryDocuments, Packer, PackingConfig};
use internlm2_datasets::tokenize::{
    PackConfig, PackStats, PackedRow, Segment, ShardIndex, ShardWriter, TokenDtype, TokenShards,
    VocabInfo, finished_shard, pack_documents,
};
use internlm2_datasets::{DataError, Document};

const EOS: u32 = 2;

fn vocab100() -> VocabInfo {
    VocabInfo {
        vocab_size: 100,
        bos_id: Some(1),
        eos_id: Some(EOS),
    }
}

fn seg(start: usize, len: usize, document: u64, starts_document: bool) -> Segment {
    Segment {
        start,
        len,
        document,
        starts_document,
    }
}

fn write_tokens(dir: &Path, config: &PackConfig, docs: &[&[u32]]) {
    let mut w = ShardWriter::create(dir, "s", config, vocab100()).unwrap();
    for doc in docs {
        w.push_document(doc).unwrap();
    }
    w.finish().unwrap();
}

fn all_rows(shards: &TokenShards) -> Vec<PackedRow> {
    (0..shards.len()).map(|i| shards.get(i).unwrap()).collect()
}

/// The three documents of internlm2's own Packer test.
const DOCS: [&[u32]; 3] = [&[10, 11, 12], &[20, 21], &[30, 31, 32, 33, 34, 35]];

/// Stream (positions): 10 11 12 2 | 20 21 2 | 30 31 32 33 34 35 2, N = 14 tokens, L = 4:
/// ceil(13 / 4) = 4 rows, row r = stream[4r ..= 4r + 4], 4·4 + 1 - 14 = 3 padding tokens.
fn expected_rows() -> Vec<PackedRow> {
    vec![
        PackedRow {
            tokens: vec![10, 11, 12, 2, 20],
            valid_len: 5,
            segments: vec![seg(0, 4, 0, true), seg(4, 1, 1, true)],
        },
        PackedRow {
            // Document 1 begins exactly at the row's first token (stream position 4).
            tokens: vec![20, 21, 2, 30, 31],
            valid_len: 5,
            segments: vec![seg(0, 3, 1, true), seg(3, 2, 2, true)],
        },
        PackedRow {
            tokens: vec![31, 32, 33, 34, 35],
            valid_len: 5,
            segments: vec![seg(0, 5, 2, false)],
        },
        PackedRow {
            tokens: vec![35, 2, EOS, EOS, EOS],
            valid_len: 2,
            segments: vec![seg(0, 2, 2, false)],
        },
    ]
}

#[test]
fn tokenize_rows_and_boundaries_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let config = PackConfig::default().with_seq_len(4);
    let mut w = ShardWriter::create(dir.path(), "s", &config, vocab100()).unwrap();
    for doc in DOCS {
        w.push_document(doc).unwrap();
    }
    let stats = w.finish().unwrap();
    assert_eq!(
        (
            stats.documents,
            stats.tokens,
            stats.rows,
            stats.padding,
            stats.parts
        ),
        (3, 14, 4, 3, 1)
    );
    assert!(!stats.resumed);

    // The raw files: 17 little-endian u32 tokens, 3 u64 document offsets 0, 4, 7.
    let tokens = std::fs::read(dir.path().join("s.00000.tokens")).unwrap();
    assert_eq!(tokens.len(), 17 * 4);
    assert_eq!(&tokens[..8], &[10, 0, 0, 0, 11, 0, 0, 0]);
    let docs = std::fs::read(dir.path().join("s.00000.docs")).unwrap();
    let offsets: Vec<u64> = docs
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(offsets, vec![0, 4, 7]);

    let index = ShardIndex::load(dir.path().join("s.index.json")).unwrap();
    assert_eq!(
        (index.seq_len, index.dtype, index.pad_id),
        (4, TokenDtype::U32, EOS)
    );
    assert_eq!((index.parts[0].valid_tokens, index.parts[0].rows), (14, 4));

    let shards = TokenShards::open(dir.path()).unwrap();
    assert_eq!(all_rows(&shards), expected_rows());
    assert_eq!(
        (shards.seq_len(), shards.documents(), shards.tokens()),
        (4, 3, 14)
    );
}

#[test]
fn tokenize_long_document_continues_into_the_next_rows() {
    let long: Vec<u32> = (10..=20).collect(); // 11 tokens, longer than two rows of 4
    for (eos, valid_last, padding) in [(true, 4, 1), (false, 3, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let config = PackConfig::default().with_seq_len(4).with_eos(eos);
        write_tokens(dir.path(), &config, &[&long]);
        let shards = TokenShards::open(dir.path()).unwrap();
        // 11 (+1 EOS) tokens -> ceil(11 / 4) = 3 rows (ceil(10 / 4) = 3 without the EOS).
        let rows = all_rows(&shards);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].tokens, vec![10, 11, 12, 13, 14]);
        assert_eq!(rows[0].segments, vec![seg(0, 5, 0, true)]);
        assert_eq!(rows[1].tokens, vec![14, 15, 16, 17, 18]);
        assert_eq!(rows[1].segments, vec![seg(0, 5, 0, false)]);
        let last = if eos {
            vec![18, 19, 20, 2, EOS]
        } else {
            vec![18, 19, 20, EOS, EOS]
        };
        assert_eq!(rows[2].tokens, last);
        assert_eq!(rows[2].valid_len, valid_last);
        assert_eq!(rows[2].segments, vec![seg(0, valid_last, 0, false)]);
        assert_eq!(shards.indexes().next().unwrap().1.padding, padding);
        // Nothing was cut: the document view gives the whole document back.
        assert_eq!(shards.document_tokens(0).unwrap(), &long[..]);
    }
}

fn fixture_tokenizer() -> Tokenizer {
    let dir = std::env::var_os("INTERNLM2_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    Tokenizer::from_file(dir.join("tokenizer/tokenizer_internlm2.model"))
        .expect("InternLM2 tokenizer fixture (set INTERNLM2_FIXTURES)")
}

#[test]
fn tokenize_fixture_tokenizer_bos_and_eos_between_documents() {
    let tok = fixture_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let config = PackConfig::default().with_seq_len(4);
    let docs = [
        Document::new("Hello world"),
        Document::new(""),
        Document::new("Hello, world! How are you today?"),
    ];
    let stats = pack_documents(&tok, docs, &config, dir.path(), "web-00000").unwrap();
    // From the SentencePiece reference vectors (fixtures/tokenizer/vectors.jsonl):
    // "Hello world" = 1 9843 2028, the other = 1 9843 328 2028 346 2745 657 629 3514 345.
    // Stream with EOS 2: 4 + 11 = 15 tokens -> ceil(14 / 4) = 4 rows, 17 - 15 = 2 padding.
    assert_eq!(
        (
            stats.documents,
            stats.empty_documents,
            stats.tokens,
            stats.rows,
            stats.padding
        ),
        (2, 1, 15, 4, 2)
    );
    let shards = TokenShards::open(dir.path()).unwrap();
    let rows = all_rows(&shards);
    let expected = [
        (
            vec![1, 9843, 2028, 2, 1],
            5,
            vec![seg(0, 4, 0, true), seg(4, 1, 1, true)],
        ),
        (vec![1, 9843, 328, 2028, 346], 5, vec![seg(0, 5, 1, true)]),
        (
            vec![346, 2745, 657, 629, 3514],
            5,
            vec![seg(0, 5, 1, false)],
        ),
        (vec![3514, 345, 2, 2, 2], 3, vec![seg(0, 3, 1, false)]),
    ];
    for (row, (tokens, valid_len, segments)) in rows.iter().zip(expected) {
        assert_eq!(row.tokens, tokens);
        assert_eq!(row.valid_len, valid_len);
        assert_eq!(row.segments, segments);
    }
    let vocab = shards.vocab();
    assert_eq!(
        (vocab.vocab_size, vocab.bos_id, vocab.eos_id),
        (92544, Some(1), Some(2))
    );
    // 92,544 ids do not fit u16.
    let err = pack_documents(
        &tok,
        [Document::new("x")],
        &config.clone().with_dtype(TokenDtype::U16),
        dir.path(),
        "u16",
    )
    .unwrap_err();
    assert!(matches!(err, DataError::Config { .. }), "{err}");
}

#[test]
fn tokenize_split_files_hold_the_same_rows() {
    for (rows_per_file, parts, padding) in [(2, 2, 3), (1, 4, 3), (4, 1, 3), (9, 1, 3)] {
        let dir = tempfile::tempdir().unwrap();
        let config = PackConfig::default()
            .with_seq_len(4)
            .with_rows_per_file(Some(rows_per_file));
        write_tokens(dir.path(), &config, &DOCS);
        let shards = TokenShards::open(dir.path()).unwrap();
        let index = shards.indexes().next().unwrap().1.clone();
        assert_eq!(
            (index.parts.len(), index.padding, index.tokens),
            (parts, padding, 14)
        );
        assert_eq!(
            all_rows(&shards),
            expected_rows(),
            "rows_per_file {rows_per_file}"
        );
        for (i, doc) in DOCS.iter().enumerate() {
            assert_eq!(shards.document_tokens(i as u64).unwrap(), *doc);
        }
    }
    // Two rows per file: part 0 = stream[0..9] (offsets 0 4 7), part 1 = stream[8..14] + 3
    // padding, whose first piece continues document 2 (31 is its second token).
    let dir = tempfile::tempdir().unwrap();
    let config = PackConfig::default()
        .with_seq_len(4)
        .with_rows_per_file(Some(2));
    write_tokens(dir.path(), &config, &DOCS);
    let index = ShardIndex::load(dir.path().join("s.index.json")).unwrap();
    let p = &index.parts;
    assert_eq!(
        (p[0].valid_tokens, p[0].segments, p[0].first_document),
        (9, 3, 0)
    );
    assert_eq!(
        (p[1].valid_tokens, p[1].segments, p[1].first_document),
        (6, 1, 2)
    );
    assert!(!p[0].first_continues && p[1].first_continues);
    assert_eq!(
        std::fs::read(dir.path().join("s.00001.tokens"))
            .unwrap()
            .len(),
        9 * 4
    );
    // One row per file: part 1 starts with 20, the first token of document 1.
    let dir = tempfile::tempdir().unwrap();
    write_tokens(dir.path(), &config.with_rows_per_file(Some(1)), &DOCS);
    let index = ShardIndex::load(dir.path().join("s.index.json")).unwrap();
    let firsts: Vec<(u64, bool)> = index
        .parts
        .iter()
        .map(|p| (p.first_document, p.first_continues))
        .collect();
    assert_eq!(firsts, vec![(0, false), (1, false), (2, true), (2, true)]);
}

#[test]
fn tokenize_padding_never_counts_in_the_loss() {
    let last = expected_rows().pop().unwrap(); // [35, EOS | pad pad pad], valid 2
    let b = PackedRow::to_token_batch(&[last.clone()], false).unwrap();
    assert_eq!(b.inputs, vec![35, 2, 2, 2]);
    assert_eq!(b.targets, vec![2, 2, 2, 2]);
    assert_eq!(b.positions, vec![0, 1, 0, 1]);
    assert_eq!(b.segments, Some(vec![0, 0, 1, 1]));
    assert_eq!(b.loss_mask, vec![true, false, false, false]);
    let c = PackedRow::to_token_batch(&[last], true).unwrap();
    assert_eq!(c.positions, vec![0, 1, 2, 3]);
    assert_eq!(c.segments, None);
    assert_eq!(c.loss_mask, vec![true, false, false, false]);
    // Rows of different lengths, or none, are configuration errors.
    let mut short = expected_rows()[0].clone();
    short.tokens.pop();
    short.valid_len = 4;
    short.segments = vec![seg(0, 4, 0, true)];
    let mixed = PackedRow::to_token_batch(&[expected_rows()[0].clone(), short], false);
    assert!(matches!(mixed, Err(DataError::Config { .. })));
    assert!(matches!(
        PackedRow::to_token_batch(&[], false),
        Err(DataError::Config { .. })
    ));
}

/// A small corpus with documents from 1 to ~40 words.
fn corpus() -> Vec<String> {
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "far", "away",
    ];
    (0..40)
        .map(|i| {
            let n = (i * 7) % 37 + 1;
            (0..n)
                .map(|j| words[(i + j * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn bpe() -> Tokenizer {
    Tokenizer::train_bpe(corpus().iter(), 300).unwrap()
}

/// Packs the corpus; returns the encoded documents (with `<s>`) too.
fn pack_corpus(tok: &Tokenizer, dir: &Path, config: &PackConfig) -> Vec<Vec<u32>> {
    let docs = corpus().into_iter().map(Document::new);
    let stats = pack_documents(tok, docs, config, dir, "corpus").unwrap();
    assert_eq!(stats.documents, 40);
    corpus()
        .iter()
        .map(|t| tok.encode(t, true).unwrap())
        .collect()
}

#[test]
fn tokenize_mmap_round_trip_equals_the_in_memory_stream() {
    let tok = bpe();
    let eos = tok.eos_id().unwrap();
    for dtype in [TokenDtype::U32, TokenDtype::U16] {
        let dir = tempfile::tempdir().unwrap();
        let config = PackConfig::default()
            .with_seq_len(16)
            .with_dtype(dtype)
            .with_rows_per_file(Some(3))
            .with_chunk_documents(7);
        let encoded = pack_corpus(&tok, dir.path(), &config);
        // The stream, built here from the tokenizer directly.
        let mut stream: Vec<u32> = Vec::new();
        let mut doc_of: Vec<u64> = Vec::new();
        for (d, doc) in encoded.iter().enumerate() {
            stream.extend(doc.iter().copied().chain([eos]));
            doc_of.extend(std::iter::repeat_n(d as u64, doc.len() + 1));
        }
        let shards = TokenShards::open(dir.path()).unwrap();
        shards.verify().unwrap();
        let n = stream.len();
        let rows = (n - 1).div_ceil(16);
        assert_eq!(Dataset::len(&shards), rows);
        assert_eq!(shards.tokens(), n as u64);
        assert!(shards.get(rows).is_none());
        assert_eq!(shards.iter().count(), rows);
        for r in 0..rows {
            let row = shards.get(r).unwrap();
            let window = &stream[16 * r..(16 * r + 17).min(n)];
            assert_eq!(row.valid_len, window.len());
            assert_eq!(&row.tokens[..window.len()], window, "row {r} ({dtype:?})");
            assert!(row.tokens[window.len()..].iter().all(|&t| t == eos));
            // Segments: the document of every real token, and where documents begin.
            for s in &row.segments {
                for i in s.start..s.start + s.len {
                    assert_eq!(doc_of[16 * r + i], s.document);
                }
                let p = 16 * r + s.start;
                assert_eq!(s.starts_document, p == 0 || doc_of[p - 1] != s.document);
            }
        }
        let file = dir.path().join("corpus.00000.tokens");
        assert_eq!(
            std::fs::metadata(file).unwrap().len(),
            (3 * 16 + 1) * dtype.width() as u64
        );
        assert_eq!(DocumentSource::len(&shards), 40);
        for (i, doc) in encoded.iter().enumerate() {
            assert_eq!(
                &*shards.document(0, i),
                &doc[..],
                "document {i} ({dtype:?})"
            );
        }
    }
}

#[test]
fn tokenize_token_batches_equal_the_packers() {
    let tok = bpe();
    let eos = tok.eos_id().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = PackConfig::default()
        .with_seq_len(8)
        .with_rows_per_file(Some(2));
    let encoded = pack_corpus(&tok, dir.path(), &config);
    let shards = TokenShards::open(dir.path()).unwrap();
    let full: Vec<PackedRow> = all_rows(&shards)
        .into_iter()
        .filter(|r| r.valid_len == r.tokens.len())
        .collect();
    assert!(full.len() >= shards.len() - 1 && full.len() > 20);
    for cross in [false, true] {
        let mut packer = Packer::new(
            InMemoryDocuments::new(encoded.clone()),
            PackingConfig {
                seq_len: 8,
                eos_id: eos,
                cross_document_attention: cross,
            },
        );
        let ours = PackedRow::to_token_batch(&full, cross).unwrap();
        assert_eq!(ours, packer.next_batch(full.len()), "cross {cross}");
    }
}

#[test]
fn tokenize_document_view_feeds_the_packer_at_another_length() {
    let tok = bpe();
    let dir = tempfile::tempdir().unwrap();
    let config = PackConfig::default()
        .with_seq_len(8)
        .with_dtype(TokenDtype::U16)
        .with_rows_per_file(Some(1));
    let encoded = pack_corpus(&tok, dir.path(), &config);
    let shards = TokenShards::open(dir.path()).unwrap();
    let packing = shards.packing_config(32, false).unwrap();
    let rows = shards.tokens() as usize / 32 + 3; // past the end: into epoch 1
    let mut from_shards = Packer::new(shards, packing);
    let mut in_memory = Packer::new(InMemoryDocuments::new(encoded), packing);
    assert_eq!(from_shards.next_batch(rows), in_memory.next_batch(rows));
    assert_eq!(from_shards.cursor(), in_memory.cursor());
    assert_eq!(from_shards.cursor().epoch, 1);
}

fn packed_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tokens(dir.path(), &PackConfig::default().with_seq_len(4), &DOCS);
    dir
}

fn corrupt_path(err: DataError) -> PathBuf {
    match err {
        DataError::Corrupt { path, .. } => path,
        other => panic!("expected DataError::Corrupt, got {other:?}"),
    }
}

#[test]
fn tokenize_damaged_files_are_typed_errors() {
    // Truncated token file.
    let dir = packed_dir();
    let tokens = dir.path().join("s.00000.tokens");
    let bytes = std::fs::read(&tokens).unwrap();
    std::fs::write(&tokens, &bytes[..bytes.len() - 4]).unwrap();
    let err = TokenShards::open(dir.path()).unwrap_err();
    assert_eq!(corrupt_path(err), tokens);

    // A flipped byte keeps the size: open works, verify names the file.
    let dir = packed_dir();
    let tokens = dir.path().join("s.00000.tokens");
    let mut bytes = std::fs::read(&tokens).unwrap();
    bytes[5] ^= 1;
    std::fs::write(&tokens, &bytes).unwrap();
    let shards = TokenShards::open(dir.path()).unwrap();
    assert_eq!(corrupt_path(shards.verify().unwrap_err()), tokens);

    // Boundary table out of order.
    let dir = packed_dir();
    let docs = dir.path().join("s.00000.docs");
    let table: Vec<u8> = [0u64, 7, 4].iter().flat_map(|o| o.to_le_bytes()).collect();
    std::fs::write(&docs, table).unwrap();
    assert_eq!(
        corrupt_path(TokenShards::open(dir.path()).unwrap_err()),
        docs
    );

    // Index that is not JSON, and one whose counts disagree.
    let dir = packed_dir();
    let index = dir.path().join("s.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, &text[..text.len() / 2]).unwrap();
    assert_eq!(
        corrupt_path(TokenShards::open(dir.path()).unwrap_err()),
        index
    );
    std::fs::write(&index, text.replace("\"rows\": 4,", "\"rows\": 5,")).unwrap();
    assert_eq!(
        corrupt_path(TokenShards::open(dir.path()).unwrap_err()),
        index
    );

    // A missing token file is an I/O error naming it; an empty folder a configuration error.
    let dir = packed_dir();
    let tokens = dir.path().join("s.00000.tokens");
    std::fs::remove_file(&tokens).unwrap();
    match TokenShards::open(dir.path()).unwrap_err() {
        DataError::Io { path, .. } => assert_eq!(path, tokens),
        other => panic!("expected Io, got {other:?}"),
    }
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        TokenShards::open(empty.path()),
        Err(DataError::Config { .. })
    ));

    // An id outside the vocabulary.
    let mut w = ShardWriter::create(empty.path(), "v", &PackConfig::default(), vocab100()).unwrap();
    assert!(matches!(
        w.push_document(&[5, 100]),
        Err(DataError::Config { .. })
    ));
}

#[test]
fn tokenize_restart_skips_a_finished_shard() {
    let tok = bpe();
    let dir = tempfile::tempdir().unwrap();
    let config = PackConfig::default().with_seq_len(16);
    let read = Cell::new(0usize);
    let docs = || {
        corpus()
            .into_iter()
            .map(Document::new)
            .inspect(|_| read.set(read.get() + 1))
    };
    let first = pack_documents(&tok, docs(), &config, dir.path(), "shard").unwrap();
    assert_eq!((read.get(), first.resumed), (40, false));
    let tokens = dir.path().join("shard.00000.tokens");
    let written = std::fs::metadata(&tokens).unwrap().modified().unwrap();

    // Relaunch: nothing read, nothing written, the same statistics.
    read.set(0);
    let again = pack_documents(&tok, docs(), &config, dir.path(), "shard").unwrap();
    assert_eq!(read.get(), 0);
    assert!(again.resumed);
    assert_eq!(
        again,
        PackStats {
            resumed: true,
            ..first
        }
    );
    assert_eq!(
        std::fs::metadata(&tokens).unwrap().modified().unwrap(),
        written
    );

    // Other settings for a finished shard: a configuration error, not a silent mix.
    let other = config.clone().with_seq_len(32);
    let err = pack_documents(&tok, docs(), &other, dir.path(), "shard").unwrap_err();
    assert!(matches!(err, DataError::Config { .. }), "{err}");

    // A damaged shard is packed again.
    std::fs::write(&tokens, b"short").unwrap();
    let vocab = VocabInfo::of(&tok);
    assert_eq!(
        finished_shard(dir.path(), "shard", &config, &vocab).unwrap(),
        None
    );
    read.set(0);
    let repacked = pack_documents(&tok, docs(), &config, dir.path(), "shard").unwrap();
    assert_eq!((read.get(), repacked), (40, first));
    TokenShards::open(dir.path()).unwrap().verify().unwrap();

    // A writer dropped before finish leaves no index: the shard does not exist yet.
    let crashed = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(crashed.path(), "c", &config, vocab).unwrap();
    w.push_document(&[5, 6, 7]).unwrap();
    drop(w);
    assert_eq!(
        finished_shard(crashed.path(), "c", &config, &vocab).unwrap(),
        None
    );
    assert!(matches!(
        TokenShards::open(crashed.path()),
        Err(DataError::Config { .. })
    ));
}
