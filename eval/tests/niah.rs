//! The needle harness end to end on a scripted model that answers correctly when the needle
//! sits in the first 40% of the document of a short prompt and wrongly otherwise, so that the
//! grid, the heatmap data and the resumption are known exactly; insertion positions checked
//! with the InternLM2 tokenizer.

mod common;

use std::path::Path;

use internlm2_eval::niah::{
    Haystack, Language, NeedleConfig, NeedleRecord, NeedleTask, Scoring, default_needles, run_grid,
};
use internlm2_eval::records::read_records;

const DOC_START: &str = "The document given to you by the user is ";
const DOC_END: &str = "\n\nNow, the question";

fn haystack_texts() -> Vec<String> {
    (0..40)
        .map(|d| {
            (0..12)
                .map(|s| {
                    format!("Paragraph {d} sentence {s} describes the slow river and the hills.")
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Where in the document (0-1, by characters) `needle` sits, if it is there.
fn fraction(prompt: &str, start: &str, end: &str, needle: &str) -> Option<f64> {
    let doc_start = prompt.find(start)? + start.len();
    let doc_end = prompt.rfind(end)?;
    let at = prompt[doc_start..doc_end].find(needle)?;
    Some(at as f64 / (doc_end - doc_start) as f64)
}

fn grid(task: NeedleTask) -> NeedleConfig {
    NeedleConfig {
        lengths: vec![1200, 600],
        depths: vec![0.0, 25.0, 50.0, 75.0, 100.0],
        repeats: 2,
        seed: 7,
        length_buffer: 200,
        task,
        language: Language::English,
        scoring: Scoring::Keyword,
        max_new_tokens: 16,
        sentence_snap: true,
        title: "scripted".into(),
        ..NeedleConfig::default()
    }
}

/// Answers with every keyword whose needle is in the first 40% of a prompt under 800 tokens.
fn scripted_answer(prompt: &str, tokens: usize) -> String {
    let mut answer = String::from("I looked.");
    if tokens >= 800 {
        return answer;
    }
    for n in default_needles(Language::English) {
        if fraction(prompt, DOC_START, DOC_END, &n.needle).is_some_and(|f| f < 0.4) {
            answer.push_str(&format!(" It is {}.", n.keyword));
        }
    }
    answer
}

#[test]
fn single_needle_grid_is_known_exactly_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = common::Scripted::new(scripted_answer);
    let haystack = Haystack::new(&model.tokenizer, &haystack_texts()).unwrap();
    let needles = default_needles(Language::English);
    let config = grid(NeedleTask::Single);
    let summary = run_grid(&mut model, &haystack, &needles, &config, dir.path()).unwrap();
    assert_eq!((summary.cells, summary.ran, summary.skipped), (20, 20, 0));
    // Batches of 3 over the 20 cells.
    assert_eq!(model.calls, [3, 3, 3, 3, 3, 3, 2]);

    let h = &summary.heatmap;
    assert_eq!(h.lengths, [600, 1200]);
    assert_eq!(h.depths, [0.0, 25.0, 50.0, 75.0, 100.0]);
    let full = Some(100.0);
    let zero = Some(0.0);
    assert_eq!(
        h.scores,
        [
            [full, zero],
            [full, zero],
            [zero, zero],
            [zero, zero],
            [zero, zero]
        ]
    );
    assert_eq!(h.counts, vec![vec![2, 2]; 5]);
    assert_eq!(h.length_means, [Some(40.0), Some(0.0)]);
    assert_eq!(h.overall, Some(20.0));

    // The records: prompt template, lengths and needle positions.
    let records: Vec<NeedleRecord> = read_records(&summary.results).unwrap();
    assert_eq!(records.len(), 20);
    for r in &records {
        let needle = needles.iter().find(|n| n.keyword == r.keywords[0]).unwrap();
        let needle_tokens = model
            .tokenizer
            .encode(&needle.inserted_text(), false)
            .unwrap();
        assert_eq!(r.haystack_tokens, r.length - 200 - needle_tokens.len());
        // The template and the answer fit in the buffer.
        assert!(
            r.prompt_tokens + 16 <= r.length,
            "{} tokens for {}",
            r.prompt_tokens,
            r.length
        );
        assert!(
            r.prompt_tokens > r.length - 200,
            "{} tokens for {}",
            r.prompt_tokens,
            r.length
        );
        let p = r.needle_positions[0];
        let point = (r.haystack_tokens as f64 * r.depth / 100.0).floor() as usize;
        let context = haystack.context(r.seed, r.haystack_tokens).tokens;
        if r.depth == 100.0 {
            assert_eq!(p, r.haystack_tokens);
        } else if r.depth == 0.0 {
            assert_eq!(p, 0);
        } else {
            // Snapped back to the end of the sentence the point falls in (< one sentence).
            assert!(
                p <= point && point - p < 20,
                "depth {}: {p} vs {point}",
                r.depth
            );
            let before = model.tokenizer.decode(&context[..p]).unwrap();
            assert!(
                before.ends_with("hills."),
                "{:?}",
                &before[before.len() - 20..]
            );
        }
        assert_eq!(r.found, [r.score == 100.0]);
        assert!(!r.haystack_cycled);
    }
    // The prompt is the OpenCompass template inside the chat turn.
    let first = &model.asked[0];
    assert!(first.starts_with(
        "<s><|im_start|>user\nYou are an intelligent AI assistant skilled in answering user questions.\n"
    ) || first.starts_with(
        "<|im_start|>user\nYou are an intelligent AI assistant skilled in answering user questions.\n"
    ), "{:?}", &first[..120]);
    assert!(first.ends_with("<|im_end|>\n<|im_start|>assistant\n"));
    // Two repeats draw from seeds 7 and 8.
    assert!(records.iter().any(|r| r.seed == 7) && records.iter().any(|r| r.seed == 8));

    // The outputs.
    let png = std::fs::read(&summary.plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let summary_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary.summary).unwrap()).unwrap();
    assert_eq!(summary_json["heatmap"]["overall"], 20.0);

    // A rerun skips every cell.
    let mut again = common::Scripted::new(scripted_answer);
    let summary = run_grid(&mut again, &haystack, &needles, &config, dir.path()).unwrap();
    assert_eq!((summary.ran, summary.skipped), (0, 20));
    assert!(again.calls.is_empty());
    assert_eq!(summary.heatmap.overall, Some(20.0));

    // An interrupted run (a partial last line, two cells missing) runs only those again.
    let text = std::fs::read_to_string(&summary.results).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = format!("{}\n{}", lines[..18].join("\n"), &lines[18][..10]);
    std::fs::write(&summary.results, cut).unwrap();
    let mut again = common::Scripted::new(scripted_answer);
    let summary = run_grid(&mut again, &haystack, &needles, &config, dir.path()).unwrap();
    assert_eq!((summary.ran, summary.skipped), (2, 18));
    assert_eq!(summary.heatmap.overall, Some(20.0));
    assert_eq!(
        read_records::<NeedleRecord>(&summary.results)
            .unwrap()
            .len(),
        20
    );

    // Other settings in the same directory are refused.
    let other = NeedleConfig {
        scoring: Scoring::KeywordOrLevenshtein,
        ..config
    };
    assert!(run_grid(&mut again, &haystack, &needles, &other, dir.path()).is_err());
}

#[test]
fn multi_needle_scores_the_share_of_keywords() {
    // Two needles per cell at d and d + (100 - d) / 2: found only in the first 40%.
    // depth 0 -> 0 and 50: one of two; 25 -> 25 and 62.5: one; 50, 75, 100: none.
    let dir = tempfile::tempdir().unwrap();
    let mut model = common::Scripted::new(|prompt: &str, _| {
        let start = "The document given to you by the user is ";
        let end = "\n\nNow, the questions are:";
        let mut answer = String::new();
        for n in default_needles(Language::English) {
            if fraction(prompt, start, end, &n.needle).is_some_and(|f| f < 0.4) {
                answer.push_str(&format!("{}; ", n.keyword));
            }
        }
        answer
    });
    let haystack = Haystack::new(&model.tokenizer, &haystack_texts()).unwrap();
    let config = NeedleConfig {
        lengths: vec![900],
        repeats: 1,
        ..grid(NeedleTask::Multi { count: 2 })
    };
    let summary = run_grid(
        &mut model,
        &haystack,
        &default_needles(Language::English),
        &config,
        dir.path(),
    )
    .unwrap();
    let column: Vec<Option<f64>> = summary.heatmap.scores.iter().map(|r| r[0]).collect();
    assert_eq!(
        column,
        [Some(50.0), Some(50.0), Some(0.0), Some(0.0), Some(0.0)]
    );
    assert_eq!(summary.heatmap.overall, Some(20.0));
    let records: Vec<NeedleRecord> = read_records(&summary.results).unwrap();
    for r in &records {
        assert_eq!(r.keywords.len(), 2);
        assert_ne!(r.keywords[0], r.keywords[1]);
        assert!(r.needle_positions[0] <= r.needle_positions[1]);
    }
    assert!(model.asked[0].contains("Now, the questions are: "));
}

#[test]
fn passkey_and_chinese_templates() {
    let dir = tempfile::tempdir().unwrap();
    // The passkey: a model that reads the key wherever it is.
    let mut model = common::Scripted::new(|prompt: &str, _| {
        let at = prompt.find("The pass key is ").unwrap() + "The pass key is ".len();
        prompt[at..].split('.').next().unwrap().to_string()
    });
    let texts = vec![internlm2_eval::niah::passkey_filler(200)];
    let haystack = Haystack::new(&model.tokenizer, &texts).unwrap();
    let config = NeedleConfig {
        lengths: vec![700],
        depths: vec![10.0, 90.0],
        repeats: 3,
        ..grid(NeedleTask::Passkey)
    };
    let summary = run_grid(&mut model, &haystack, &[], &config, &dir.path().join("pk")).unwrap();
    assert_eq!(summary.heatmap.overall, Some(100.0));
    assert!(model.asked[0].contains(
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them."
    ));
    assert!(model.asked[0].contains("What is the pass key? The pass key is"));

    // Chinese: the template and a scripted reader of the Chinese needles.
    let zh: Vec<String> = (0..30)
        .map(|d| {
            format!("第{d}段。").repeat(1) + &"河水缓缓流过山谷，远处的村庄安静而美丽。".repeat(10)
        })
        .collect();
    let needles = default_needles(Language::Chinese);
    let mut model = common::Scripted::new(|prompt: &str, _| {
        let found = default_needles(Language::Chinese)
            .into_iter()
            .find(|n| prompt.contains(&n.needle))
            .unwrap();
        format!("答案是{}。", found.keyword)
    });
    let haystack = Haystack::new(&model.tokenizer, &zh).unwrap();
    let config = NeedleConfig {
        lengths: vec![600],
        depths: vec![0.0, 50.0, 100.0],
        repeats: 1,
        language: Language::Chinese,
        ..grid(NeedleTask::Single)
    };
    let out: &Path = &dir.path().join("zh");
    let summary = run_grid(&mut model, &haystack, &needles, &config, out).unwrap();
    assert_eq!(summary.heatmap.overall, Some(100.0));
    let asked = &model.asked[0];
    assert!(asked.contains("你是一个善于回答用户问题的智能AI助手\n请保持你的回答简洁清楚。"));
    assert!(asked.contains("用户现在给你的文档是"));
    assert!(asked.contains("\n\n现在请问："));
    // The needle at 50% is snapped back to the end of a Chinese sentence.
    let records: Vec<NeedleRecord> = read_records(&summary.results).unwrap();
    let mid = records.iter().find(|r| r.depth == 50.0).unwrap();
    let context = haystack.context(mid.seed, mid.haystack_tokens).tokens;
    let before = model
        .tokenizer
        .decode(&context[..mid.needle_positions[0]])
        .unwrap();
    assert!(before.ends_with('。'), "{before:?}");
}
