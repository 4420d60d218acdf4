//! Tests of the text filter stages: format, rules, safety, quality.

use std::time::{Duration, Instant};

use internlm2_datasets::stages::format::{FormatConfig, FormatStage, Normalization};
use internlm2_datasets::stages::quality::{
    NgramClassifier, NgramConfig, QualityConfig, QualityStage, Threshold,
};
use internlm2_datasets::stages::rules::{REASONS, RulesConfig, RulesStage};
use internlm2_datasets::stages::safety::{
    DomainBlocklist, SafetyConfig, SafetyStage, WordBlocklist,
};
use internlm2_datasets::{Chain, Classifier, DataError, Document, Stage, StageStats, Verdict};
use xxhash_rust::xxh3::xxh3_128;

/// Clean English prose: passes every default rule.
const CLEAN_EN: &str = "The village of Ashford lies in a quiet valley between two low hills, and most of its families have farmed the same land for generations.
Every spring the river that runs through the valley rises with melted snow, and the farmers wait for the water to settle before they plant.
The old stone bridge near the church was built in the eighteenth century, and it still carries carts, bicycles and the occasional tractor.
In the evenings people gather at the small bakery on the main street to trade news about the weather, the harvest and their children.
A local historian has collected letters, photographs and maps that show how the village changed after the railway arrived.
Her book describes the arrival of the first train, the opening of the school and the long winter when the pond froze solid.
Visitors who walk along the river path can see herons, kingfishers and, with some luck, an otter hunting near the reeds.
The council meets once a month to discuss repairs, festivals and the future of the old mill.";

/// Clean Chinese prose: passes every default rule.
const CLEAN_ZH: &str = "青石镇坐落在两座小山之间的山谷里，大多数人家世代在这里耕种同一片土地。
每年春天，流经山谷的小河因融雪而上涨，农民们要等河水退去之后才开始播种。
教堂旁边的古老石桥建于清朝中期，至今仍有马车、自行车和拖拉机从桥上经过。
傍晚时分，人们聚集在主街的小面包店里，谈论天气、收成和各自的孩子。
一位本地历史学家收集了许多信件、照片和地图，记录了铁路通车以后小镇的变化。";

fn kept(verdict: Verdict) -> Document {
    match verdict {
        Verdict::Keep(doc) => doc,
        Verdict::Drop { reason, .. } => panic!("dropped: {reason}"),
    }
}

// ---------------------------------------------------------------------------------------------
// format
// ---------------------------------------------------------------------------------------------

#[test]
fn filters_format_normalisation_is_exact() {
    let stage = FormatStage::default();
    let raw = "  \r\n\r\nCafe\u{301}  au   lait\u{A0}noir \t\r\nline two\u{7}\r\n\r\n\r\n\r\n\r\nend\u{FEFF}  \r\n";
    // NFC composes e + U+0301; CRLF -> LF; BEL and BOM removed; NBSP -> space; trailing
    // whitespace removed; space runs collapsed; 4 blank lines -> 2; leading blank lines and
    // the final newline trimmed.
    assert_eq!(
        stage.clean(raw),
        "Caf\u{E9} au lait noir\nline two\n\n\nend"
    );
    assert_eq!(stage.clean("e\u{301}"), "\u{E9}");
    // Indentation is kept, inner space runs collapse; a lone CR is a line break too.
    assert_eq!(
        stage.clean("    indented  code\rnext"),
        "    indented code\nnext"
    );

    // NFKC also folds ligatures and full-width Latin; NFC leaves them.
    let nfkc = FormatStage::new(FormatConfig::default().with_normalization(Normalization::Nfkc));
    assert_eq!(
        nfkc.clean("\u{FB01}ne \u{FF26}\u{FF55}\u{FF4C}\u{FF4C}"),
        "fine Full"
    );
    assert_eq!(
        stage.clean("\u{FB01}ne \u{FF26}\u{FF55}\u{FF4C}\u{FF4C}"),
        "\u{FB01}ne \u{FF26}\u{FF55}\u{FF4C}\u{FF4C}"
    );
    // Every step switched off: the text is untouched.
    let none = FormatStage::new(FormatConfig::text_unchanged());
    assert_eq!(none.clean(raw), raw);
    // Blank-line limit of 0 removes all blank lines.
    let tight = FormatStage::new(FormatConfig::default().with_max_blank_lines(Some(0)));
    assert_eq!(tight.clean("a\n\n\nb\n \nc"), "a\nb\nc");
}

#[test]
fn filters_format_ids_are_stable_content_hashes() {
    let stage = FormatStage::new(FormatConfig::default().with_detect_language(false));
    let source = "https://example.org/page";
    let doc = kept(stage.apply(Document::new("Cafe\u{301} text.\r\n").with_source(source)));
    assert_eq!(doc.text, "Caf\u{E9} text.");
    // The documented formula: xxh3-128 of len(source) (u64 LE) || source || normalised text.
    let mut bytes = (source.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(source.as_bytes());
    bytes.extend_from_slice("Caf\u{E9} text.".as_bytes());
    let expected = format!("{:032x}", xxh3_128(&bytes));
    assert_eq!(doc.id, expected);
    assert_eq!(doc.id.len(), 32);

    // Same normalised content, same id; other source, other id.
    let again = kept(stage.apply(Document::new("Caf\u{E9} text.").with_source(source)));
    assert_eq!(again.id, expected);
    let other = kept(stage.apply(Document::new("Caf\u{E9} text.").with_source("https://b.org")));
    assert_ne!(other.id, expected);

    // Existing ids are kept unless overwriting is asked for; a prefix is prepended.
    let given = kept(stage.apply(Document::new("x").with_id("mine")));
    assert_eq!(given.id, "mine");
    let prefixed = FormatStage::new(
        FormatConfig::default()
            .with_detect_language(false)
            .with_overwrite_ids(true)
            .with_id_prefix("web-".into()),
    );
    let doc = kept(
        prefixed.apply(
            Document::new("Caf\u{E9} text.")
                .with_source(source)
                .with_id("old"),
        ),
    );
    assert_eq!(doc.id, format!("web-{expected}"));
}

#[test]
fn filters_format_detects_languages_and_drops() {
    let stage = FormatStage::default();
    let en = kept(stage.apply(Document::new(CLEAN_EN)));
    assert_eq!(en.language.as_deref(), Some("en"));
    let score = en.metadata["language_score"].as_f64().unwrap();
    assert!(score > 0.5 && score <= 1.0, "{score}");
    let zh = kept(stage.apply(Document::new(CLEAN_ZH)));
    assert_eq!(zh.language.as_deref(), Some("zh"));

    let only_en =
        FormatStage::new(FormatConfig::default().with_allowed_languages(Some(vec!["en".into()])));
    assert!(only_en.apply(Document::new(CLEAN_EN)).is_keep());
    assert_eq!(
        only_en.apply(Document::new(CLEAN_ZH)).reason(),
        Some("language_not_allowed")
    );

    // Digits only: no language can be identified, confidence 0.
    let confident =
        FormatStage::new(FormatConfig::default().with_min_language_confidence(Some(0.5)));
    assert_eq!(
        confident
            .apply(Document::new("1234 5678 9012 3456"))
            .reason(),
        Some("low_language_confidence")
    );
    assert!(confident.apply(Document::new(CLEAN_EN)).is_keep());

    assert_eq!(
        stage.apply(Document::new(" \r\n\t\u{7} \n")).reason(),
        Some("empty")
    );
}

// ---------------------------------------------------------------------------------------------
// rules
// ---------------------------------------------------------------------------------------------

fn check(config: RulesConfig, text: &str) -> Option<&'static str> {
    RulesStage::new(config).unwrap().check(text, None)
}

/// `n` words `word0000 word0001 ...` (no stop words, no punctuation).
fn plain_words(n: usize) -> String {
    (0..n)
        .map(|i| format!("word{i:04}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn filters_rules_default_keeps_clean_text() {
    let stage = RulesStage::default();
    assert_eq!(stage.check(CLEAN_EN, Some("en")), None);
    assert_eq!(stage.check(CLEAN_ZH, Some("zh")), None);
    assert_eq!(stage.check(CLEAN_ZH, None), None);
    // With everything disabled, nothing is dropped.
    assert_eq!(check(RulesConfig::disabled(), "x"), None);
    // Every reason is distinct and snake_case.
    let mut reasons = REASONS.to_vec();
    reasons.sort();
    reasons.dedup();
    assert_eq!(reasons.len(), REASONS.len());
    assert!(REASONS.iter().all(|r| {
        r.chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
    }));
}

#[test]
fn filters_rules_word_count_counts_cjk_characters() {
    let cfg = || {
        RulesConfig::disabled()
            .with_min_words(Some(50))
            .with_max_words(Some(60))
    };
    // "--" is not a word.
    assert_eq!(
        check(cfg(), &format!("{} --", plain_words(49))),
        Some("gopher_word_count")
    );
    assert_eq!(check(cfg(), &plain_words(50)), None);
    assert_eq!(check(cfg(), &plain_words(61)), Some("gopher_word_count"));
    // Chinese: one character is one word.
    assert_eq!(check(cfg(), &"中文".repeat(25)), None);
    assert_eq!(check(cfg(), &"中".repeat(49)), Some("gopher_word_count"));
}

#[test]
fn filters_rules_each_rule_fires_with_its_reason() {
    let d = RulesConfig::disabled;
    let lines = |items: &[&str]| items.join("\n");
    // (config with one rule, text that fails it, reason, text that passes it)
    let cases: Vec<(RulesConfig, String, &str, String)> = vec![
        (
            d().with_max_replacement_chars(Some(0.001)),
            format!("{}\u{FFFD}", "a".repeat(99)), // 1 of 100
            "replacement_chars",
            "a".repeat(100),
        ),
        (
            d().with_max_control_chars(Some(0.001)),
            format!("{}\u{E000}", "a".repeat(99)), // private use
            "control_chars",
            "a".repeat(100),
        ),
        (
            d().with_max_digit_fraction(Some(0.3)),
            format!("{} {}", "1234567890".repeat(6), "abcdefghij".repeat(6)), // 60 of 120
            "digit_fraction",
            format!("{} {}", "1234567890".repeat(3), "abcdefghij".repeat(9)), // 30 of 120
        ),
        (
            d().with_max_dominant_char(Some(0.3)),
            format!("{}{}", "a".repeat(70), "bcdefghijk".repeat(3)), // 70 of 100
            "dominant_char",
            "abcdefghij".repeat(10),
        ),
        (
            d().with_max_punctuation(Some(0.25)),
            "x!".repeat(60), // 60 of 120
            "punctuation_high",
            format!("{}.", "word ".repeat(30)),
        ),
        (
            d().with_min_punctuation(Some(0.005)),
            "word ".repeat(30), // 120 letters, no punctuation
            "punctuation_low",
            format!("{}.", "word ".repeat(30)), // 1 of 121 = 0.0083
        ),
        (
            d().with_max_empty_lines(Some(0.6)),
            "a\n\n\n\n\nb".to_string(), // 4 of 6 lines
            "empty_lines",
            "a\n\n\n\nb".to_string(), // 3 of 5 = 0.6, not above
        ),
        (
            d().with_min_mean_line_width(Some(10.0)),
            lines(&["one", "two", "three", "four"]), // mean 3.75
            "short_lines",
            // A Chinese poem: 5 characters of width 2 plus a comma: 11 columns per line.
            lines(&[
                "床前明月光，",
                "疑是地上霜。",
                "举头望明月，",
                "低头思故乡。",
            ]),
        ),
        (
            d().with_max_line_chars(Some(10_000)),
            "x".repeat(10_001),
            "long_line",
            "x".repeat(10_000),
        ),
        (
            d().with_max_separator_lines(Some(0.2)),
            lines(&["Title line", "-----", "Body text", "= = = = =", "More text"]), // 2 of 5
            "separator_anomaly",
            lines(&["Title line", "-----", "Body text", "- - -", "More text"]), // 1 of 5
        ),
        (
            d().with_max_symbol_run(Some(100)),
            format!("text {}", "~".repeat(101)),
            "symbol_run",
            format!("text {}", "~".repeat(100)),
        ),
        (
            d().with_drop_lorem_ipsum(true),
            "LOREM Ipsum dolor sit amet.".to_string(),
            "c4_lorem_ipsum",
            "Lorem is not followed by it here.".to_string(),
        ),
        (
            d().with_drop_curly_braces(true),
            "function f() { return 1; }".to_string(),
            "c4_curly_brace",
            "function f() returns 1.".to_string(),
        ),
        (
            d().with_max_javascript_lines(Some(0.2)),
            lines(&[
                "Please enable JavaScript to view.",
                "Line two.",
                "Line three.",
            ]), // 1 of 3
            "c4_javascript",
            lines(&[
                "Please enable JavaScript.",
                "Two.",
                "Three.",
                "Four.",
                "Five.",
            ]), // 1 of 5
        ),
        (
            d().with_max_policy_lines(Some(0.2)),
            lines(&[
                "We use cookies to improve your visit.",
                "Line two.",
                "Line three.",
            ]),
            "c4_policy",
            lines(&[
                "Read our Privacy Policy.",
                "Two.",
                "Three.",
                "Four.",
                "Five.",
            ]),
        ),
        (
            d().with_min_terminal_punct_lines(Some(0.12)),
            lines(&["no end"; 10]),
            "c4_terminal_punct",
            // 2 of 10 lines end in terminal punctuation (one of them Chinese).
            [vec!["no end"; 8], vec!["an end.", "结束。"]]
                .concat()
                .join("\n"),
        ),
        (
            d().with_min_mean_word_length(Some(3.0))
                .with_max_mean_word_length(Some(10.0)),
            "a b c d e".to_string(), // mean 1
            "gopher_mean_word_length",
            // Chinese: the rule is skipped (every word is one character).
            "中文的文本没有空格".to_string(),
        ),
        (
            d().with_max_mean_word_length(Some(10.0)),
            "extraordinarily incomprehensibilities".to_string(), // mean 17
            "gopher_mean_word_length",
            "ordinary words".to_string(),
        ),
        (
            d().with_max_symbol_word_ratio(Some(0.1)),
            "#one #two three four five six seven eight nine ten".to_string(), // 2 / 10
            "gopher_symbol_ratio",
            "#one two three four five six seven eight nine ten".to_string(), // 1 / 10
        ),
        (
            d().with_max_symbol_word_ratio(Some(0.1)),
            "wait... what… one two three four five six seven eight".to_string(), // 2 / 10
            "gopher_symbol_ratio",
            "wait... one two three four five six seven eight nine".to_string(),
        ),
        (
            d().with_max_bullet_lines(Some(0.9)),
            lines(&["• item"; 10]),
            "gopher_bullet_lines",
            [vec!["- item"; 9], vec!["A closing line."]]
                .concat()
                .join("\n"), // 9 of 10
        ),
        (
            d().with_max_ellipsis_lines(Some(0.3)),
            lines(&["And then...", "it went on…", "The end."]), // 2 of 3
            "gopher_ellipsis_lines",
            [vec!["it went on…"; 3], vec!["Fine."; 7]]
                .concat()
                .join("\n"), // 3 of 10
        ),
        (
            d().with_min_alpha_words(Some(0.8)),
            "1 2 3 4 five".to_string(), // 1 of 5
            "gopher_alpha_words",
            "one two three four 5".to_string(), // 4 of 5
        ),
        (
            d().with_max_dup_lines(Some(0.3)),
            lines(&["a line", "b line", "a line", "a line"]), // 2 of 4 repeat
            "gopher_dup_lines",
            lines(&["a", "b", "c", "d", "e", "f", "g", "a", "a", "a"]), // 3 of 10
        ),
        (
            d().with_max_dup_line_chars(Some(0.2)),
            lines(&["aaaaaaaaaa", "aaaaaaaaaa", &"b".repeat(20)]), // 10 of 40
            "gopher_dup_line_chars",
            lines(&["aaaaaaaaaa", "aaaaaaaaaa", &"b".repeat(40)]), // 10 of 60
        ),
        (
            d().with_max_dup_paragraphs(Some(0.3)),
            "p one\nsame\n\np two\n\np one\nsame".to_string(), // 1 of 3
            "gopher_dup_paragraphs",
            "p one\n\np two\n\np three\n\np one\nsame".to_string(), // "p one" != "p one\nsame"
        ),
        (
            d().with_max_dup_paragraph_chars(Some(0.2)),
            format!(
                "{}\n\n{}\n\n{}",
                "a".repeat(10),
                "a".repeat(10),
                "b".repeat(20)
            ),
            "gopher_dup_paragraph_chars",
            format!(
                "{}\n\n{}\n\n{}",
                "a".repeat(10),
                "a".repeat(10),
                "b".repeat(40)
            ),
        ),
        (
            // "buy now" 3 times: 3 * 6 = 18 of 43 word characters.
            d().with_max_top_ngram_chars(vec![(2, 0.2)]),
            "buy now buy now buy now and then some other words here".to_string(),
            "gopher_top_ngram",
            "buy now and then some other words here".to_string(),
        ),
        (
            // The second "one two three four five" (19 chars) of 85 word characters.
            d().with_max_dup_ngram_chars(vec![(5, 0.15)]),
            "one two three four five one two three four five alpha beta gamma delta epsilon \
             zeta eta theta iota kappa"
                .to_string(),
            "gopher_dup_ngram",
            "one two three four five one two three four alpha beta gamma delta epsilon zeta"
                .to_string(),
        ),
    ];
    for (config, bad, reason, good) in cases {
        assert_eq!(
            check(config.clone(), &bad),
            Some(reason),
            "should fire: {bad:?}"
        );
        assert_eq!(
            check(config, &good),
            None,
            "should pass ({reason}): {good:?}"
        );
    }
}

#[test]
fn filters_rules_stop_words_apply_by_language() {
    let stage = RulesStage::new(RulesConfig::disabled().with_min_stop_words(Some(2))).unwrap();
    let text = "cats sleep all day long";
    assert_eq!(stage.check(text, Some("en")), Some("gopher_stop_words"));
    assert_eq!(stage.check(text, Some("fr")), None);
    assert_eq!(stage.check(text, None), None);
    assert_eq!(stage.check("The cat AND dog", Some("en")), None);
    let doc = Document {
        language: Some("en".into()),
        ..Document::new(text)
    };
    assert_eq!(stage.apply(doc).reason(), Some("gopher_stop_words"));
}

#[test]
fn filters_rules_config_validates_and_round_trips() {
    assert!(matches!(
        RulesStage::new(RulesConfig::default().with_max_dup_lines(Some(1.5))),
        Err(DataError::Config { .. })
    ));
    assert!(
        RulesStage::new(RulesConfig::default().with_max_top_ngram_chars(vec![(0, 0.2)])).is_err()
    );
    let config = RulesConfig::default()
        .with_min_words(Some(10))
        .with_drop_curly_braces(true);
    let json = serde_json::to_string(&config).unwrap();
    let back: RulesConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    // Missing fields take their defaults.
    let partial: RulesConfig =
        internlm2_datasets::from_partial_json(r#"{"min_words": null}"#).unwrap();
    assert_eq!(partial.min_words, None);
    assert_eq!(partial.max_words, Some(100_000));
}

// ---------------------------------------------------------------------------------------------
// safety
// ---------------------------------------------------------------------------------------------

#[test]
fn filters_domain_blocklist_matches_subdomains_only() {
    let list =
        DomainBlocklist::from_domains(["example.com", "*.ads.net", "Tracker.IO.", "# note", ""]);
    assert_eq!(list.len(), 3);
    assert!(list.is_blocked("example.com"));
    assert!(list.is_blocked("a.b.example.com"));
    assert!(list.is_blocked("WWW.Example.Com."));
    assert!(!list.is_blocked("badexample.com"));
    assert!(!list.is_blocked("example.com.evil.org"));
    assert!(!list.is_blocked("com"));
    assert!(list.is_blocked("ads.net") && list.is_blocked("x.ads.net"));
    assert_eq!(
        list.matching_domain("cdn.tracker.io").as_deref(),
        Some("tracker.io")
    );
    assert_eq!(list.matching_domain("tracker.iota"), None);
}

#[test]
fn filters_domain_blocklist_scales_to_a_million_entries() {
    let names: Vec<String> = (0..1_000_000).map(|i| format!("site{i}.test")).collect();
    let start = Instant::now();
    let list = DomainBlocklist::from_domains(&names);
    let built = start.elapsed();
    assert_eq!(list.len(), 1_000_000);
    assert!(built < Duration::from_secs(2), "built in {built:?}");
    assert!(list.is_blocked("www.site999999.test"));
    assert!(list.is_blocked("site0.test"));
    assert!(!list.is_blocked("site1000000.test"));
    assert!(!list.is_blocked("test"));
    let start = Instant::now();
    let blocked = (0..100_000)
        .filter(|i| list.is_blocked(&format!("a.b.site{}.test", i * 20)))
        .count();
    // i * 20 < 1,000,000 for i < 50,000.
    assert_eq!(blocked, 50_000);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn filters_domain_blocklist_reads_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("domains.txt");
    std::fs::write(
        &path,
        "# blocked\nexample.com\n0.0.0.0 ads.example.org # hosts format\n\nhttps://spam.net/x\n",
    )
    .unwrap();
    let list = DomainBlocklist::from_file(&path).unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.is_blocked("sub.ads.example.org"));
    assert!(!list.is_blocked("example.org"));
    assert!(list.is_blocked("spam.net"));
    assert!(matches!(
        DomainBlocklist::from_file(dir.path().join("missing")),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn filters_word_blocklist_cjk_and_word_boundaries() {
    let list = WordBlocklist::new(["ass", "赌博", "sex", "bad word"]).unwrap();
    assert_eq!(list.len(), 4);
    // Latin entries do not match inside longer words.
    assert_eq!(list.count("The class assembled in the grass."), 0);
    assert_eq!(list.count("You ASS! An ass."), 2);
    assert_eq!(list.count("Sexy sextant"), 0);
    // CJK entries match inside text without spaces.
    assert_eq!(list.find("我们今天去赌博了"), ["赌博"]);
    // CJK neighbours are not word characters: a Latin entry between them matches.
    assert_eq!(list.find("看sex视频"), ["sex"]);
    // Multi-word entries.
    assert_eq!(list.count("a Bad Word, and bad words"), 1);
}

#[test]
fn filters_safety_stage_reasons_and_scores() {
    struct Shouting;
    impl Classifier for Shouting {
        fn name(&self) -> &str {
            "toxic"
        }
        fn score(&self, doc: &Document) -> f32 {
            if doc.text.contains("HATE") {
                0.75
            } else {
                0.25
            }
        }
    }
    let stage = SafetyStage::new()
        .with_domains(DomainBlocklist::from_domains(["spam.example"]))
        .with_words(WordBlocklist::new(["casino", "赌博"]).unwrap())
        .with_classifier(Shouting, 0.5);
    let at = |text: &str, url: &str| Document::new(text).with_source(url);
    assert_eq!(
        stage.apply(at("hi", "https://www.spam.example/a")).reason(),
        Some("blocked_domain")
    );
    let by_meta = Document::new("hi").with_meta("url", "http://spam.example:8080/x");
    assert_eq!(stage.apply(by_meta).reason(), Some("blocked_domain"));
    assert_eq!(
        stage.apply(at("a casino night", "https://ok.org")).reason(),
        Some("blocked_words")
    );
    assert_eq!(
        stage.apply(at("网上赌博网站", "https://ok.org")).reason(),
        Some("blocked_words")
    );
    match stage.apply(at("I HATE this", "https://ok.org")) {
        Verdict::Drop { doc, reason } => {
            assert_eq!(reason, "toxic_score");
            assert_eq!(doc.metadata["safety_toxic"], 0.75);
        }
        Verdict::Keep(_) => panic!("kept"),
    }
    let doc = kept(stage.apply(at("A calm sentence.", "https://notspam.example")));
    assert_eq!(doc.metadata["safety_toxic"], 0.25);

    // A hit ratio instead of any hit: 1 hit in 20 words passes 0.1, 2 in 10 do not.
    let ratio = SafetyStage::new()
        .with_words(WordBlocklist::new(["casino"]).unwrap())
        .with_word_limits(None, Some(0.1));
    let long = format!("casino {}", plain_words(19));
    assert!(ratio.apply(Document::new(long)).is_keep());
    let short = format!("casino casino {}", plain_words(8));
    assert_eq!(
        ratio.apply(Document::new(short)).reason(),
        Some("blocked_words")
    );
}

#[test]
fn filters_safety_stage_from_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let domains = dir.path().join("domains.txt");
    let words = dir.path().join("words.txt");
    std::fs::write(&domains, "blocked.org\n").unwrap();
    std::fs::write(&words, "# words\nviagra\n").unwrap();
    let config = SafetyConfig::default()
        .with_domain_blocklist(Some(domains.clone()))
        .with_word_blocklist(Some(words.clone()))
        .with_max_word_hits(Some(1));
    let json = serde_json::to_string(&config).unwrap();
    let config: SafetyConfig = serde_json::from_str(&json).unwrap();
    let stage = SafetyStage::from_config(&config).unwrap();
    assert_eq!((stage.domains().len(), stage.words().len()), (1, 1));
    let doc = |text: &str| Document::new(text).with_source("https://a.blocked.org");
    assert_eq!(stage.apply(doc("x")).reason(), Some("blocked_domain"));
    // At most one hit allowed.
    assert!(stage.apply(Document::new("viagra once")).is_keep());
    assert_eq!(
        stage.apply(Document::new("viagra twice viagra")).reason(),
        Some("blocked_words")
    );
    let missing = SafetyConfig::default().with_word_blocklist(Some(dir.path().join("none.txt")));
    assert!(matches!(
        SafetyStage::from_config(&missing),
        Err(DataError::Io { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// quality
// ---------------------------------------------------------------------------------------------

const ADS: &[&str] = &[
    "Buy now and save big! Free shipping on every order today.",
    "Huge discount this weekend only, click here to buy now.",
    "Limited offer: order now and get a free gift with your purchase!",
    "Click here for the best price, buy two and get one free.",
    "Free shipping and a huge discount if you order now!",
    "Best price guaranteed, click to buy now before the offer ends.",
    "限时优惠，立即购买，全场包邮！",
    "点击领取优惠券，立即下单享受折扣！",
];

const NORMAL: &[&str] = &[
    "The river flooded the lower fields after the spring rain.",
    "Scientists measured the temperature of the lake every week.",
    "The committee discussed the school schedule at its meeting.",
    "Her grandfather built most of the furniture in the old house.",
    "The museum collection includes pottery and coins from the region.",
    "Birds leave the valley in autumn and return to the lake in spring.",
    "研究人员每周测量湖水的温度。",
    "这条河在春雨之后淹没了下游的田地。",
];

fn labelled() -> Vec<(&'static str, bool)> {
    ADS.iter()
        .map(|t| (*t, true))
        .chain(NORMAL.iter().map(|t| (*t, false)))
        .collect()
}

#[test]
fn filters_ngram_classifier_separates_and_round_trips() {
    let config = NgramConfig::new("ad".into()).with_epochs(30);
    let model = NgramClassifier::train(labelled(), config.clone()).unwrap();
    assert_eq!(model.accuracy(labelled()), 1.0);
    // Held-out examples built from the training vocabulary.
    let held_out = [
        ("Click here to buy now with free shipping!", true),
        ("Order now for a huge discount and a free gift.", true),
        ("立即购买，享受优惠！", true),
        ("The committee measured the river every spring.", false),
        ("Birds return to the old house by the lake.", false),
        ("研究人员测量河水的温度。", false),
    ];
    for (text, is_ad) in held_out {
        let score = model.score_text(text);
        assert_eq!(score > 0.5, is_ad, "{text}: {score}");
    }
    // Deterministic training.
    assert_eq!(NgramClassifier::train(labelled(), config).unwrap(), model);
    // JSON round trip: same model, same scores.
    let copy = NgramClassifier::from_json(&model.to_json()).unwrap();
    assert_eq!(copy, model);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ad.json");
    model.save_json(&path).unwrap();
    let loaded = NgramClassifier::load_json(&path).unwrap();
    assert_eq!(loaded, model);
    assert_eq!(loaded.name(), "ad");
    assert_eq!(
        loaded.score(&Document::new(ADS[0])),
        model.score_text(ADS[0])
    );
    // Corrupt files are typed errors.
    std::fs::write(&path, r#"{"format": "something else", "version": 1}"#).unwrap();
    assert!(matches!(
        NgramClassifier::load_json(&path),
        Err(DataError::Corrupt { .. })
    ));
}

#[test]
fn filters_ngram_classifier_trains_from_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    let mut lines: Vec<String> = labelled()
        .iter()
        .map(|(text, ad)| {
            serde_json::json!({"body": text, "kind": if *ad { "ad" } else { "ok" }}).to_string()
        })
        .collect();
    lines.insert(3, String::new()); // blank lines are skipped
    std::fs::write(&path, lines.join("\n")).unwrap();
    let config = NgramConfig::new("ad".into())
        .with_text_field("body".into())
        .with_label_field("kind".into())
        .with_positive_label("ad".into())
        .with_epochs(30);
    let examples = NgramClassifier::read_examples(&path, &config).unwrap();
    assert_eq!(examples.len(), ADS.len() + NORMAL.len());
    assert_eq!(examples.iter().filter(|e| e.1).count(), ADS.len());
    let model = NgramClassifier::train_jsonl(&path, config.clone()).unwrap();
    assert_eq!(model.accuracy(labelled()), 1.0);

    // A line without a label names its line number.
    std::fs::write(
        &path,
        "{\"body\": \"x\", \"kind\": \"ad\"}\n{\"body\": \"y\"}\n",
    )
    .unwrap();
    match NgramClassifier::read_examples(&path, &config) {
        Err(DataError::BadRecord { line, .. }) => assert_eq!(line, 2),
        other => panic!("{other:?}"),
    }
    // One class only cannot be trained.
    let one_class =
        NgramClassifier::train([("a", true), ("b", true)], NgramConfig::new("ad".into()));
    assert!(matches!(one_class, Err(DataError::Config { .. })));
}

#[test]
fn filters_example_ad_training_set_is_usable() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/data/quality/ad_train.jsonl"
    );
    let config = NgramConfig::new("ad".into()).with_epochs(20);
    let examples = NgramClassifier::read_examples(path, &config).unwrap();
    let positives = examples.iter().filter(|e| e.1).count();
    assert!(positives >= 30 && examples.len() - positives >= 30);
    let model =
        NgramClassifier::train(examples.iter().map(|(t, l)| (t.as_str(), *l)), config).unwrap();
    assert_eq!(
        model.accuracy(examples.iter().map(|(t, l)| (t.as_str(), *l))),
        1.0
    );
    assert!(model.score_text("Order now and get free shipping on all shoes!") > 0.5);
    assert!(model.score_text("The farmers planted wheat in the valley after the rain.") < 0.5);
}

#[test]
fn filters_quality_stage_thresholds_and_metadata() {
    let model =
        NgramClassifier::train(labelled(), NgramConfig::new("ad".into()).with_epochs(30)).unwrap();
    let stage = QualityStage::new().with_classifier(model.clone(), Threshold::Max(0.5));
    match stage.apply(Document::new("Buy now, huge discount, free shipping!")) {
        Verdict::Drop { doc, reason } => {
            assert_eq!(reason, "ad_score");
            assert!(doc.metadata["quality_ad"].as_f64().unwrap() > 0.5);
        }
        Verdict::Keep(_) => panic!("kept an ad"),
    }
    let doc = kept(stage.apply(Document::new("The river flooded the fields.")));
    assert!(doc.metadata["quality_ad"].as_f64().unwrap() < 0.5);

    // A minimum threshold (a "fluent" property): low scores are dropped.
    struct Fixed(f32);
    impl Classifier for Fixed {
        fn name(&self) -> &str {
            "fluent"
        }
        fn score(&self, _: &Document) -> f32 {
            self.0
        }
    }
    let fluent = QualityStage::new().with_classifier(Fixed(0.2), Threshold::Min(0.3));
    assert_eq!(
        fluent.apply(Document::new("x")).reason(),
        Some("fluent_score")
    );
    let fluent = QualityStage::new().with_classifier(Fixed(0.3), Threshold::Min(0.3));
    assert!(fluent.apply(Document::new("x")).is_keep());

    // From a configuration naming a saved model.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ad.json");
    model.save_json(&path).unwrap();
    let config: QualityConfig = internlm2_datasets::from_partial_json(&format!(
        r#"{{"models": [{{"path": {:?}, "threshold": {{"max": 0.5}}}}]}}"#,
        path
    ))
    .unwrap();
    let from_config = QualityStage::from_config(&config).unwrap();
    assert_eq!(from_config.len(), 1);
    assert_eq!(
        from_config
            .apply(Document::new("Click here to buy now!"))
            .reason(),
        Some("ad_score")
    );
}

// ---------------------------------------------------------------------------------------------
// statistics through a chain
// ---------------------------------------------------------------------------------------------

#[test]
fn filters_stage_stats_add_up() {
    struct KeywordAd;
    impl Classifier for KeywordAd {
        fn name(&self) -> &str {
            "ad"
        }
        fn score(&self, doc: &Document) -> f32 {
            if doc.text.contains("Buy now") {
                1.0
            } else {
                0.0
            }
        }
    }
    let chain = Chain::new()
        .add(FormatStage::default())
        .add(RulesStage::default())
        .add(SafetyStage::new().with_domains(DomainBlocklist::from_domains(["spam.example"])))
        .add(QualityStage::new().with_classifier(KeywordAd, Threshold::Max(0.5)));
    assert_eq!(chain.names(), ["format", "rules", "safety", "quality"]);
    let docs = vec![
        Document::new(" \n\t "),             // format: empty
        Document::new("Too short to keep."), // rules: word count
        Document::new(CLEAN_EN).with_source("https://news.spam.example/a"), // safety: domain
        Document::new(format!("{CLEAN_EN}\nBuy now while the offer lasts!")), // quality: ad
        Document::new(CLEAN_EN).with_source("https://ok.example/a"), // kept
        Document::new(CLEAN_ZH),             // kept
    ];
    let bytes_in: u64 = docs.iter().map(|d| d.text.len() as u64).sum();
    let mut stats = vec![StageStats::default(); chain.len()];
    let mut out = Vec::new();
    let mut rejected = Vec::new();
    for doc in docs {
        match chain.run(doc, &mut stats) {
            Ok(doc) => out.push(doc),
            Err((_, stage, reason)) => rejected.push((stage, reason)),
        }
    }
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].language.as_deref(), Some("en"));
    assert_eq!(out[1].language.as_deref(), Some("zh"));
    let expected = [
        ("format", "empty"),
        ("rules", "gopher_word_count"),
        ("safety", "blocked_domain"),
        ("quality", "ad_score"),
    ];
    for (i, (stage, reason)) in expected.iter().enumerate() {
        assert_eq!(rejected[i], (stage.to_string(), reason.to_string()));
        let s = &stats[i];
        assert_eq!(s.read, 6 - i as u64);
        assert_eq!(s.kept, 5 - i as u64);
        assert_eq!(s.dropped.len(), 1);
        assert_eq!(s.dropped[*reason], 1);
        assert!(s.check());
    }
    assert_eq!(stats[0].bytes_read, bytes_in);
}
