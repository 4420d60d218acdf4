//! The data recipe (what the data_pipeline example and the quickstart run) on the sample
//! corpus: every planted case of `examples/data/corpus/MANIFEST.md` ends where the manifest
//! says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use internlm2_datasets::io::read_documents;
use internlm2_datasets::pipeline::recipe::DataRecipe;
use internlm2_datasets::tokenize::TokenShards;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/data")
}

/// The `source` of line `line` (1-based) of a corpus file.
fn source(file: &str, line: usize) -> String {
    let text = std::fs::read_to_string(data().join("corpus").join(file)).unwrap();
    let row: serde_json::Value = serde_json::from_str(text.lines().nth(line - 1).unwrap()).unwrap();
    row["source"].as_str().unwrap().to_string()
}

fn rejects(step_dir: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(step_dir.join("rejects")) else {
        return out;
    };
    for e in entries {
        for d in read_documents(e.unwrap().path()).unwrap() {
            let d = d.unwrap();
            let reason = d.metadata["drop_reason"].as_str().unwrap().to_string();
            out.insert(d.source.clone().unwrap_or_default(), reason);
        }
    }
    out
}

#[test]
fn sample_corpus_outcomes_match_the_manifest() {
    let out = tempfile::tempdir().unwrap();
    let recipe = DataRecipe {
        vocab_size: 600,
        seq_len: 256,
        progress: false,
        ..DataRecipe::sample(data(), out.path())
    };
    let summary = recipe.run(None).unwrap();
    let report = &summary.report;
    assert!(report.check());
    // The manifest's expected counts per stage: read, kept.
    let counts: Vec<(String, u64, u64)> = report
        .steps
        .iter()
        .flat_map(|s| {
            s.stages
                .iter()
                .map(|(n, st)| (format!("{}/{n}", s.name), st.read, st.kept))
        })
        .collect();
    let expected = [
        ("filter/format", 57, 56),
        ("filter/rules", 56, 49),
        ("dedup/dedup", 49, 45),
        ("safety/safety", 45, 41),
        ("safety/quality", 41, 38),
    ];
    for (name, read, kept) in expected {
        let got = counts
            .iter()
            .find(|c| c.0 == name)
            .unwrap_or_else(|| panic!("no {name}"));
        assert_eq!((got.1, got.2), (read, kept), "{name}");
    }
    assert_eq!(summary.documents.len(), 38);

    // Every planted drop, with its reason.
    let mut dropped = HashMap::new();
    for step in ["filter", "dedup", "safety"] {
        dropped.extend(rejects(&out.path().join(step)));
    }
    let planted = [
        ("web-00000.jsonl", 17, "empty"),
        ("web-00000.jsonl", 3, "separator_anomaly"),
        ("web-00000.jsonl", 15, "c4_lorem_ipsum"),
        ("web-00001.jsonl", 3, "replacement_chars"),
        ("web-00001.jsonl", 10, "gopher_word_count"),
        ("web-00001.jsonl", 16, "gopher_dup_lines"),
        ("web-00002.jsonl", 3, "c4_javascript"),
        ("web-00002.jsonl", 12, "punctuation_high"),
        ("web-00001.jsonl", 5, "exact_duplicate"),
        ("web-00002.jsonl", 9, "exact_duplicate"),
        // The older original loses to its newer near-duplicate copy.
        ("web-00000.jsonl", 7, "near_duplicate"),
        ("web-00000.jsonl", 8, "near_duplicate"),
        ("web-00000.jsonl", 10, "blocked_domain"),
        ("web-00001.jsonl", 14, "blocked_domain"),
        ("web-00000.jsonl", 20, "blocked_words"),
        ("web-00002.jsonl", 6, "blocked_words"),
        ("web-00000.jsonl", 13, "ad_score"),
        ("web-00001.jsonl", 12, "ad_score"),
        ("web-00002.jsonl", 10, "ad_score"),
    ];
    for (file, line, reason) in planted {
        let src = source(file, line);
        assert_eq!(
            dropped.get(&src).map(String::as_str),
            Some(reason),
            "{file}:{line} {src}"
        );
    }
    assert_eq!(dropped.len(), planted.len(), "nothing else is dropped");

    // Kept on purpose: newer near-duplicate, far variant and its original, look-alike domain,
    // `scampi` (blocked word only inside a longer word).
    let kept: Vec<&str> = summary
        .documents
        .iter()
        .filter_map(|d| d.source.as_deref())
        .collect();
    for (file, line) in [
        ("web-00002.jsonl", 4),
        ("web-00001.jsonl", 19),
        ("web-00000.jsonl", 1),
        ("web-00001.jsonl", 9),
        ("web-00000.jsonl", 18),
    ] {
        assert!(
            kept.contains(&source(file, line).as_str()),
            "{file}:{line} kept"
        );
    }

    // The repository: cycle shapes <-> units broken alphabetically, docs before their folder's
    // first code file, one markdown document.
    let repo = &summary.repositories[0];
    let order: Vec<&str> = repo.metadata["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "README.md",
            "docs/usage.md",
            "native/vec.h",
            "native/vec.c",
            "geometry/README.md",
            "geometry/shapes.py",
            "geometry/area.py",
            "geometry/__init__.py",
            "geometry/units.py",
            "main.py"
        ]
    );
    // Every surviving text is in the token shards: rows cover all tokens.
    let shards = TokenShards::open(&summary.token_dir).unwrap();
    assert_eq!(shards.rows(), summary.rows);
    assert_eq!(shards.documents(), 39);
    assert_eq!(shards.rows(), (summary.tokens - 1).div_ceil(256));
}
