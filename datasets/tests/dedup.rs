//! Deduplication: exact and MinHash-LSH near-duplicates, cluster resolution, signature files,
//! plans and the filter stage.
//!
//! The near-duplicate documents are built so that the true Jaccard similarity of their shingle
//! sets is known exactly: a document of `N` distinct words has `N - 4` distinct 5-gram
//! shingles; a copy that keeps the first `m` words and replaces the rest by fresh words shares
//! the `m - 4` shingles that lie within the first `m` words and no other, so
//! `J = (m - 4) / (2 (N - 4) - (m - 4))`. With `N = 184`: `m = 164` gives 160 / 200 = 0.8 and
//! `m = 124` gives 120 / 240 = 0.5. The MinHash estimate with 128 permutations has standard
//! deviation 0.035 (J = 0.8) and 0.044 (J = 0.5), so 0.8 clears the 0.7 threshold by ~2.8 sd
//! and 0.5 stays below it by ~4.5 sd; the permutations are seeded, so the outcome is fixed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use internlm2_datasets::dedup::{
    DedupConfig, DedupFilter, DedupPlan, DedupStats, DupKind, MinHasher, SignatureFile, exact_hash,
    merge_signatures, shingles, write_signatures,
};
use internlm2_datasets::{Chain, DataError, Document, StageStats};

const N: usize = 184;

/// `N` distinct words `{p}0 .. {p}183`.
fn base_text(p: &str) -> String {
    (0..N)
        .map(|i| format!("{p}{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first `m` words of `base_text(p)` followed by `N - m` fresh words `{fresh}0..`.
fn variant_text(p: &str, m: usize, fresh: &str) -> String {
    let mut words: Vec<String> = (0..m).map(|i| format!("{p}{i}")).collect();
    words.extend((0..N - m).map(|i| format!("{fresh}{i}")));
    words.join(" ")
}

fn true_jaccard(a: &str, b: &str, cfg: &DedupConfig) -> f64 {
    let a: HashSet<u64> = shingles(a, cfg).into_iter().collect();
    let b: HashSet<u64> = shingles(b, cfg).into_iter().collect();
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

fn doc(id: &str, text: &str, ts: i64) -> Document {
    Document::new(text).with_id(id).with_timestamp(ts)
}

/// Write `docs` as one shard and merge it.
fn dedup(cfg: &DedupConfig, docs: &[Document], dir: &Path) -> DedupPlan {
    let path = dir.join("shard.minhash");
    assert_eq!(
        write_signatures(cfg, docs, &path).unwrap(),
        docs.len() as u64
    );
    merge_signatures(cfg, &[path]).unwrap()
}

#[test]
fn dedup_near_duplicate_at_08_removed_at_05_kept() {
    let cfg = DedupConfig::default();
    let a = base_text("w");
    let b = variant_text("w", 164, "b");
    let c = variant_text("w", 124, "c");
    // The construction (see the file comment), checked on the real shingle sets.
    assert_eq!(shingles(&a, &cfg).len(), 180);
    assert_eq!(true_jaccard(&a, &b, &cfg), 0.8);
    assert_eq!(true_jaccard(&a, &c, &cfg), 0.5);
    assert_eq!(true_jaccard(&b, &c, &cfg), 0.5);
    // The seeded MinHash estimates lie within 3 standard deviations of the truth.
    let h = MinHasher::new(&cfg);
    let sig = |t: &str| h.signature(t).unwrap();
    let (ab, ac) = (sig(&a).jaccard(&sig(&b)), sig(&a).jaccard(&sig(&c)));
    eprintln!("estimates: J(a,b) = {ab}, J(a,c) = {ac}");
    assert!((ab - 0.8).abs() < 3.0 * 0.0354 && (ac - 0.5).abs() < 3.0 * 0.0442);

    let dir = tempfile::tempdir().unwrap();
    let docs = [doc("a", &a, 1), doc("b", &b, 2), doc("c", &c, 3)];
    let plan = dedup(&cfg, &docs, dir.path());
    // a ~ b (0.8): one cluster, the newer b survives; c (0.5 to both) stays.
    assert_eq!(plan.removed(), vec![("a", DupKind::Near)]);
    assert_eq!(
        plan.stats(),
        DedupStats {
            docs: 3,
            clusters: 1,
            exact_removed: 0,
            near_removed: 1
        }
    );
}

#[test]
fn dedup_cjk_characters_count_as_words() {
    // 184 distinct Han characters without spaces: each is a word, so the same construction
    // gives J = 0.8 (first 164 characters kept) and J = 0.5 (first 124 kept).
    let cfg = DedupConfig::default();
    let han = |range: std::ops::Range<u32>| -> String {
        range.map(|i| char::from_u32(0x4E00 + i).unwrap()).collect()
    };
    let a = han(0..184);
    let b = han(0..164) + &han(1000..1020);
    let c = han(0..124) + &han(2000..2060);
    assert_eq!(true_jaccard(&a, &b, &cfg), 0.8);
    assert_eq!(true_jaccard(&a, &c, &cfg), 0.5);
    let dir = tempfile::tempdir().unwrap();
    let plan = dedup(
        &cfg,
        &[doc("a", &a, 2), doc("b", &b, 1), doc("c", &c, 3)],
        dir.path(),
    );
    assert_eq!(plan.removed(), vec![("b", DupKind::Near)]);
}

#[test]
fn dedup_exact_duplicates_keep_the_newest() {
    let cfg = DedupConfig::default();
    let text = base_text("x");
    let docs = [
        doc("p", &text, 5),
        doc("q", &format!("  {text}\n"), 9), // same text after trimming
        doc("r", &text, 7),
        doc("s", &base_text("y"), 1),
    ];
    let dir = tempfile::tempdir().unwrap();
    let plan = dedup(&cfg, &docs, dir.path());
    assert_eq!(
        plan.removed(),
        vec![("p", DupKind::Exact), ("r", DupKind::Exact)]
    );
    assert_eq!(
        plan.stats(),
        DedupStats {
            docs: 4,
            clusters: 1,
            exact_removed: 2,
            near_removed: 0
        }
    );
    assert_eq!(plan.stats().kept(), 2);

    // Exact-only dedup leaves a J = 0.8 near-duplicate alone; fuzzy-only reports the exact
    // copies as near-duplicates.
    let near = [
        doc("a", &text, 1),
        doc("b", &variant_text("x", 164, "n"), 2),
    ];
    let exact_only = cfg.clone().with_fuzzy(false);
    assert!(dedup(&exact_only, &near, dir.path()).is_empty());
    let fuzzy_only = cfg.clone().with_exact(false);
    let plan = dedup(&fuzzy_only, &docs, dir.path());
    assert_eq!(
        plan.removed(),
        vec![("p", DupKind::Near), ("r", DupKind::Near)]
    );
}

#[test]
fn dedup_priority_field_and_ties() {
    let a = base_text("k");
    let b = variant_text("k", 164, "z"); // J = 0.8
    let docs = [
        doc("old", &a, 10).with_meta("quality", 0.9),
        doc("new", &b, 20).with_meta("quality", 0.2),
    ];
    let dir = tempfile::tempdir().unwrap();
    // Default: the newest (largest timestamp) survives.
    let plan = dedup(&DedupConfig::default(), &docs, dir.path());
    assert_eq!(plan.removed(), vec![("old", DupKind::Near)]);
    // Ranked by another field, the highest quality survives.
    let by_quality = DedupConfig::default().with_priority_field("quality".into());
    let plan = dedup(&by_quality, &docs, dir.path());
    assert_eq!(plan.removed(), vec![("new", DupKind::Near)]);

    // A missing priority ranks lowest; equal priorities keep the smallest id.
    let docs = [
        Document::new(a.clone()).with_id("no-time"),
        doc("timed", &a, -5),
        doc("t2", &b, 3),
        doc("t1", &b, 3),
    ];
    let plan = dedup(&DedupConfig::default(), &docs, dir.path());
    // One cluster of four: t1 and t2 tie at 3, the smaller id t1 survives.
    assert_eq!(
        plan.removed(),
        vec![
            ("no-time", DupKind::Near),
            ("t2", DupKind::Exact),
            ("timed", DupKind::Near)
        ]
    );
}

const CODE_2: &str = "def mean(values):\n  total = 0\n  for v in values:\n    total += v\n  return total / len(values)\n\n\ndef main():\n  print(mean([1, 2, 3]))\n";

#[test]
fn dedup_code_indentation_does_not_matter_in_code_mode() {
    let code_4 = CODE_2.replace("  ", "    ");
    let code_tab = CODE_2.replace("  ", "\t");
    assert_ne!(CODE_2, code_4);
    let (plain, code) = (DedupConfig::default(), DedupConfig::code());

    // Code mode: one token stream, one exact hash.
    assert_eq!(exact_hash(CODE_2, &code), exact_hash(&code_4, &code));
    assert_eq!(exact_hash(CODE_2, &code), exact_hash(&code_tab, &code));
    // Plain mode hashes the text itself: the three files are not identical.
    assert_ne!(exact_hash(CODE_2, &plain), exact_hash(&code_4, &plain));
    assert_ne!(exact_hash(&code_4, &plain), exact_hash(&code_tab, &plain));
    // Plain mode ignores punctuation, code mode does not: `+` vs `-` differ only in code mode.
    let minus = CODE_2.replace("total / len", "total - len");
    assert_eq!(shingles(CODE_2, &plain), shingles(&minus, &plain));
    assert_ne!(shingles(CODE_2, &code), shingles(&minus, &code));

    let docs = [
        doc("two", CODE_2, 1),
        doc("four", &code_4, 3),
        doc("tab", &code_tab, 2),
    ];
    let dir = tempfile::tempdir().unwrap();
    let plan = dedup(&code, &docs, dir.path());
    assert_eq!(
        plan.removed(),
        vec![("tab", DupKind::Exact), ("two", DupKind::Exact)]
    );
    // Plain mode still clusters them (same words), but not as exact duplicates.
    let plan = dedup(&plain, &docs, dir.path());
    assert_eq!(
        plan.removed(),
        vec![("tab", DupKind::Near), ("two", DupKind::Near)]
    );
}

/// 16 documents with known duplicates, ids b0..b9 (distinct bases), e* exact copies, n* J = 0.8
/// near copies; returns (shard 0, shard 1).
fn two_shard_corpus() -> (Vec<Document>, Vec<Document>) {
    let base = |k: usize| base_text(&format!("d{k}w"));
    let near = |k: usize| variant_text(&format!("d{k}w"), 164, &format!("d{k}n"));
    let b = |k: usize| doc(&format!("b{k}"), &base(k), 100 + k as i64);
    let mut s0: Vec<Document> = (0..5).map(b).collect();
    let mut s1: Vec<Document> = (5..10).map(b).collect();
    s1.push(doc("e0", &base(0), 200)); // newer exact copy of b0 in the other shard
    s0.push(doc("e1", &base(6), 50)); // older exact copy of b6 in the other shard
    s1.push(doc("n2", &near(2), 300)); // newer near copy of b2 in the other shard
    s0.push(doc("n7", &near(7), 1)); // older near copy of b7 in the other shard
    s1.push(doc("n8", &near(8), 1)); // older near copy of b8 in the same shard
    s1.push(doc("e9", &base(9), 109)); // exact copy of b9, same timestamp: "b9" < "e9" wins
    (s0, s1)
}

#[test]
fn dedup_two_shards_merge_equal_one_shard() {
    let cfg = DedupConfig::default();
    let (s0, s1) = two_shard_corpus();
    let dir = tempfile::tempdir().unwrap();
    let (p0, p1, all) = (
        dir.path().join("0.sig"),
        dir.path().join("1.sig"),
        dir.path().join("all.sig"),
    );
    write_signatures(&cfg, &s0, &p0).unwrap();
    write_signatures(&cfg, &s1, &p1).unwrap();
    write_signatures(&cfg, s0.iter().chain(&s1), &all).unwrap();
    let sharded = merge_signatures(&cfg, &[p0.clone(), p1.clone()]).unwrap();
    let single = merge_signatures(&cfg, &[all]).unwrap();
    // Reversed shard order gives the same decision too.
    let reversed = merge_signatures(&cfg, &[p1, p0]).unwrap();

    let expected = vec![
        ("b0", DupKind::Exact),
        ("b2", DupKind::Near),
        ("e1", DupKind::Exact),
        ("e9", DupKind::Exact),
        ("n7", DupKind::Near),
        ("n8", DupKind::Near),
    ];
    let stats = DedupStats {
        docs: 16,
        clusters: 6,
        exact_removed: 3,
        near_removed: 3,
    };
    for plan in [&sharded, &single, &reversed] {
        assert_eq!(plan.removed(), expected);
        assert_eq!(plan.stats(), stats);
    }
    // Per-shard plans split the removals by the shard that holds the document.
    assert_eq!(sharded.shards(), 2);
    let ids = |p: &DedupPlan| {
        p.removed()
            .into_iter()
            .map(|(id, _)| id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&sharded.for_shard(0)), ["b0", "b2", "e1", "n7"]);
    assert_eq!(ids(&sharded.for_shard(1)), ["e9", "n8"]);

    // Save / load round trip.
    let plan_path = dir.path().join("plan.bin");
    sharded.save(&plan_path).unwrap();
    assert_eq!(DedupPlan::load(&plan_path).unwrap(), sharded);
}

fn corrupt_message(result: Result<impl std::fmt::Debug, DataError>, path: &Path) -> String {
    match result {
        Err(DataError::Corrupt { path: p, message }) => {
            assert_eq!(p, path);
            message
        }
        other => panic!("expected DataError::Corrupt, got {other:?}"),
    }
}

#[test]
fn dedup_corrupt_files_give_typed_errors() {
    let cfg = DedupConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.sig");
    let docs = [doc("a", &base_text("a"), 1), doc("b", &base_text("b"), 2)];
    write_signatures(&cfg, &docs, &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // 64-byte header + 2 records of 4 + 4 + 8 + 16 + 128 * 4 = 544 bytes plus the id (1 byte).
    assert_eq!(bytes.len(), 64 + 2 * (544 + 1));
    assert_eq!(SignatureFile::open(&good).unwrap().len(), 2);

    let write = |name: &str, b: &[u8]| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let truncated = write("truncated.sig", &bytes[..bytes.len() - 10]);
    assert!(corrupt_message(SignatureFile::open(&truncated), &truncated).contains("truncated"));
    let mut flipped = bytes.clone();
    flipped[64 + 100] ^= 1;
    let flipped = write("flipped.sig", &flipped);
    assert!(corrupt_message(SignatureFile::open(&flipped), &flipped).contains("checksum"));
    let garbage = write("garbage.sig", &[7u8; 100]);
    assert!(corrupt_message(SignatureFile::open(&garbage), &garbage).contains("magic"));
    let empty = write("empty.sig", b"");
    corrupt_message(SignatureFile::open(&empty), &empty);
    // The merge reports the bad file among good ones.
    corrupt_message(
        merge_signatures(&cfg, &[good.clone(), flipped.clone()]),
        &flipped,
    );
    // A file written with another seed cannot be merged with this configuration.
    let other = dir.path().join("other.sig");
    write_signatures(&cfg.clone().with_seed(7), &docs, &other).unwrap();
    assert!(
        corrupt_message(merge_signatures(&cfg, std::slice::from_ref(&other)), &other)
            .contains("configuration")
    );
    // A missing file is an I/O error naming it.
    let missing = dir.path().join("missing.sig");
    assert!(matches!(
        merge_signatures(&cfg, &[missing]),
        Err(DataError::Io { .. })
    ));

    // Plans too.
    let plan_path = dir.path().join("plan.bin");
    merge_signatures(&cfg, &[good])
        .unwrap()
        .save(&plan_path)
        .unwrap();
    let plan_bytes = std::fs::read(&plan_path).unwrap();
    let cut = write("plan-cut.bin", &plan_bytes[..plan_bytes.len() - 1]);
    corrupt_message(DedupPlan::load(&cut), &cut);
    corrupt_message(DedupPlan::load(&garbage), &garbage);
}

#[test]
fn dedup_bad_input_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sig");
    let bad_banding = DedupConfig::default().with_banding(16, 4);
    assert!(matches!(
        write_signatures(&bad_banding, &[], &path),
        Err(DataError::Config { .. })
    ));
    assert!(matches!(
        merge_signatures(&DedupConfig::default().with_threshold(1.5), &[]),
        Err(DataError::Config { .. })
    ));
    let no_id = [Document::new("text without an id")];
    assert!(matches!(
        write_signatures(&DedupConfig::default(), &no_id, &path),
        Err(DataError::Config { .. })
    ));
    // Empty corpus and documents without words are fine.
    let plan = merge_signatures(&DedupConfig::default(), &[]).unwrap();
    assert_eq!(plan.stats(), DedupStats::default());
    let blank = [
        doc("x", " ... ", 1),
        doc("y", " ... ", 2),
        doc("z", "!!", 3),
    ];
    let plan = dedup(&DedupConfig::default(), &blank, dir.path());
    // x and y are exact copies (no words: no signature); z has other text.
    assert_eq!(plan.removed(), vec![("x", DupKind::Exact)]);
}

#[test]
fn dedup_filter_stats_add_up() {
    let cfg = DedupConfig::default();
    let (s0, s1) = two_shard_corpus();
    let dir = tempfile::tempdir().unwrap();
    let (p0, p1) = (dir.path().join("0.sig"), dir.path().join("1.sig"));
    write_signatures(&cfg, &s0, &p0).unwrap();
    write_signatures(&cfg, &s1, &p1).unwrap();
    let plan = merge_signatures(&cfg, &[p0, p1]).unwrap();

    // One filter job per shard, each with its own part of the plan; counts merged.
    let mut total = StageStats::default();
    let mut kept_ids = Vec::new();
    for (shard, docs) in [s0, s1].into_iter().enumerate() {
        let chain = Chain::new().add(DedupFilter::new(Arc::new(plan.for_shard(shard))));
        let mut stats = vec![StageStats::default()];
        for d in docs {
            if let Ok(d) = chain.run(d, &mut stats) {
                kept_ids.push(d.id);
            }
        }
        assert!(stats[0].check());
        total.merge(&stats[0]);
    }
    kept_ids.sort();
    assert_eq!(
        kept_ids,
        ["b1", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "e0", "n2"]
    );
    assert_eq!((total.read, total.kept), (16, 10));
    assert_eq!(total.dropped["exact_duplicate"], 3);
    assert_eq!(total.dropped["near_duplicate"], 3);
    assert!(total.check());
    assert_eq!(total.kept, plan.stats().kept());
}
