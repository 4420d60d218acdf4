//! The `safety` stage (SPEC 5, after deduplication): domain blocklist, word blocklist and
//! thresholds on toxicity / pornography classifiers.
//!
//! - [`DomainBlocklist`]: a set of domains; a listed domain blocks its host and every
//!   subdomain (`example.com` blocks `a.b.example.com`, not `badexample.com`). Lookups cost one
//!   hash probe per label of the host, and entries are stored as 64-bit fingerprints, so lists
//!   of millions of domains are cheap to build and hold.
//! - [`WordBlocklist`]: Aho-Corasick over lower-cased text; Latin-script entries match whole
//!   words only, entries with CJK (unspaced-script) characters match anywhere, since such text
//!   has no spaces between words.
//! - [`SafetyStage`]: both blocklists plus any number of [`Classifier`]s, each with a maximum
//!   score.
//!
//! Drop reasons: `blocked_domain`, `blocked_words`, and `<name>_score` for a classifier named
//! `<name>` whose score is above its maximum.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use burn::config::Config;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::classifier::{ScoredChecks, Threshold};
use super::ngram::NgramClassifier;
use super::text::{Prehashed, is_unspaced, words};
use crate::error::IoContext;
use crate::{Classifier, DataError, Document, Result, Stage, Verdict};

/// Blocked domains; a domain blocks itself and all its subdomains.
///
/// Entries are lower-cased and stored as xxh3-64 fingerprints of the domain name: about 9
/// bytes per entry. Two different domains share a fingerprint with probability 2^-64, so with
/// ten million entries a host that is not listed is blocked by mistake with probability about
/// 5·10^-13 per label.
///
/// ```
/// use internlm2_datasets::stages::safety::DomainBlocklist;
/// let list = DomainBlocklist::from_domains(["example.com", "# a comment", "Ads.Net."]);
/// assert_eq!(list.len(), 2);
/// assert!(list.is_blocked("example.com"));
/// assert!(list.is_blocked("a.b.EXAMPLE.com"));
/// assert!(!list.is_blocked("badexample.com"));
/// assert_eq!(list.matching_domain("x.ads.net").as_deref(), Some("ads.net"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct DomainBlocklist {
    fingerprints: HashSet<u64, Prehashed>,
}

impl DomainBlocklist {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// A list of these entries (lines in the format of [`DomainBlocklist::insert`]).
    pub fn from_domains<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Self::new();
        list.extend(entries);
        list
    }

    /// Read a list with one entry per line (see [`DomainBlocklist::insert`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).at(path)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut list = Self::new();
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).at(path)? == 0 {
                break;
            }
            list.insert(&line);
        }
        Ok(list)
    }

    /// Add all entries.
    pub fn extend<I, S>(&mut self, entries: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for entry in entries {
            self.insert(entry.as_ref());
        }
    }

    /// Add one entry; returns whether the line held a domain. Accepted forms: `example.com`,
    /// `*.example.com` or `.example.com` (same meaning), a URL (`https://example.com/x`: its
    /// host), and hosts-file lines (`0.0.0.0 example.com`). Text after `#` is a comment; blank
    /// lines are skipped; case and a trailing dot do not matter.
    pub fn insert(&mut self, line: &str) -> bool {
        match parse_entry(line) {
            Some(domain) => {
                self.fingerprints.insert(fingerprint(&domain));
                true
            }
            None => false,
        }
    }

    /// Number of distinct domains.
    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// Whether `host` or one of its parent domains is listed.
    pub fn is_blocked(&self, host: &str) -> bool {
        self.matching_domain(host).is_some()
    }

    /// The listed domain that blocks `host` (the host itself or its closest listed parent), in
    /// lower case.
    pub fn matching_domain(&self, host: &str) -> Option<String> {
        if self.fingerprints.is_empty() {
            return None;
        }
        let host = normalize_domain(host)?;
        let mut suffix = host.as_str();
        loop {
            if self.fingerprints.contains(&fingerprint(suffix)) {
                return Some(suffix.to_string());
            }
            suffix = &suffix[suffix.find('.')? + 1..];
        }
    }
}

/// The fingerprint of a normalised domain.
fn fingerprint(domain: &str) -> u64 {
    xxh3_64(domain.as_bytes())
}

/// Lower case, no trailing dot, no leading `*.` or `.`; `None` when nothing is left.
fn normalize_domain(domain: &str) -> Option<String> {
    let domain = domain.trim().trim_end_matches('.');
    let domain = domain.trim_start_matches("*.").trim_start_matches('.');
    if domain.is_empty() {
        return None;
    }
    Some(if domain.chars().any(char::is_uppercase) {
        domain.to_lowercase()
    } else {
        domain.to_string()
    })
}

/// The domain of one blocklist line, see [`DomainBlocklist::insert`].
fn parse_entry(line: &str) -> Option<String> {
    let line = line.split('#').next().unwrap_or("");
    let mut tokens = line.split_whitespace();
    let first = tokens.next()?;
    let entry = match tokens.next() {
        Some(second) if first.parse::<IpAddr>().is_ok() => second,
        _ => first,
    };
    let entry = match entry.split_once("://") {
        Some((_, rest)) => {
            let end = rest.find(['/', '?', ':']).unwrap_or(rest.len());
            &rest[..end]
        }
        None => entry,
    };
    normalize_domain(entry)
}

/// Words whose occurrence marks unsafe text.
///
/// Matching is case-insensitive (text and entries are lower-cased). An entry made of
/// Latin-script (or other spaced-script) characters matches only as a whole word: the
/// characters just before and after the match must not be letters, digits or `_` (characters
/// of unspaced scripts do not count as letters here, so `看sex视频` matches `sex`). An entry
/// containing a character of an unspaced script ([`is_unspaced`]: Chinese, Japanese, Korean,
/// Thai, ...) matches anywhere. Every occurrence counts, overlapping ones included.
///
/// ```
/// use internlm2_datasets::stages::safety::WordBlocklist;
/// let list = WordBlocklist::new(["casino", "赌博"]).unwrap();
/// assert_eq!(list.count("Online CASINO, casinos and a casino!"), 2);
/// assert_eq!(list.count("网上赌博网站"), 1);
/// assert_eq!(list.find("在线赌博casino"), ["赌博", "casino"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct WordBlocklist {
    matcher: Option<AhoCorasick>,
    entries: Vec<Entry>,
}

/// One word-blocklist entry.
#[derive(Debug, Clone)]
struct Entry {
    word: String,
    boundary_start: bool,
    boundary_end: bool,
}

/// Whether `c` is part of a word for the boundary check.
fn is_word_char(c: char) -> bool {
    (c.is_alphanumeric() || c == '_') && !is_unspaced(c)
}

impl WordBlocklist {
    /// A list of these words (empty entries and duplicates ignored). Fails when the
    /// automaton cannot be built (too many patterns for memory).
    pub fn new<I, S>(words: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        for word in words {
            let word = word.as_ref().trim().to_lowercase();
            if word.is_empty() || !seen.insert(word.clone()) {
                continue;
            }
            let anywhere = word.chars().any(is_unspaced);
            let first = word.chars().next().unwrap_or(' ');
            let last = word.chars().next_back().unwrap_or(' ');
            entries.push(Entry {
                boundary_start: !anywhere && is_word_char(first),
                boundary_end: !anywhere && is_word_char(last),
                word,
            });
        }
        let matcher = if entries.is_empty() {
            None
        } else {
            let built = AhoCorasick::new(entries.iter().map(|e| e.word.as_str()))
                .map_err(|e| DataError::config(format!("word blocklist: {e}")))?;
            Some(built)
        };
        Ok(Self { matcher, entries })
    }

    /// Read a list with one word per line; blank lines and lines starting with `#` are
    /// skipped.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).at(path)?;
        Self::new(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#')),
        )
    }

    /// Number of distinct entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries found in `text`, one per occurrence, in order of where they end.
    pub fn find(&self, text: &str) -> Vec<&str> {
        let mut found = Vec::new();
        self.for_each_hit(text, |entry| found.push(entry.word.as_str()));
        found
    }

    /// Number of occurrences of entries in `text`.
    pub fn count(&self, text: &str) -> usize {
        let mut n = 0;
        self.for_each_hit(text, |_| n += 1);
        n
    }

    fn for_each_hit<'s>(&'s self, text: &str, mut hit: impl FnMut(&'s Entry)) {
        let Some(matcher) = &self.matcher else {
            return;
        };
        let lower = text.to_lowercase();
        for m in matcher.find_overlapping_iter(&lower) {
            let entry = &self.entries[m.pattern().as_usize()];
            let before = lower[..m.start()].chars().next_back();
            let after = lower[m.end()..].chars().next();
            if (entry.boundary_start && before.is_some_and(is_word_char))
                || (entry.boundary_end && after.is_some_and(is_word_char))
            {
                continue;
            }
            hit(entry);
        }
    }
}

/// A safety model loaded from a file: an [`NgramClassifier`] saved with
/// [`NgramClassifier::save_json`], and the highest score a kept document may have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyModel {
    /// The model file.
    pub path: PathBuf,
    /// Documents scoring above this are dropped with reason `<name>_score`.
    pub max_score: f32,
}

/// Configuration of [`SafetyStage`] (built with [`SafetyStage::from_config`]).
///
/// ```
/// use internlm2_datasets::from_partial_json;
/// use internlm2_datasets::stages::safety::SafetyConfig;
/// let config: SafetyConfig = from_partial_json(
///     r#"{"domain_blocklist": "blocked_domains.txt", "max_word_hits": 2}"#,
/// ).unwrap();
/// assert_eq!(config.max_word_hits, Some(2));
/// assert_eq!(config.url_field, "url");
/// ```
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
#[derive(Config, Debug, PartialEq)]
pub struct SafetyConfig {
    /// File of blocked domains, one per line (see [`DomainBlocklist::insert`]).
    pub domain_blocklist: Option<PathBuf>,
    /// File of blocked words, one per line (see [`WordBlocklist`]).
    pub word_blocklist: Option<PathBuf>,
    /// Drop documents with more word-blocklist hits than this (reason `blocked_words`;
    /// default `Some(0)`: any hit drops).
    #[config(default = "Some(0)")]
    pub max_word_hits: Option<usize>,
    /// Drop documents whose hits per word ([`words`](super::text::words)) are above
    /// this (reason `blocked_words`; default `None`). Use with `max_word_hits: None` to
    /// tolerate a few hits in long documents.
    pub max_word_hit_ratio: Option<f64>,
    /// Metadata field holding the page URL, read when [`Document::source`] has no host
    /// (default `"url"`).
    #[config(default = "String::from(\"url\")")]
    pub url_field: String,
    /// Classifier models to load, each with its maximum score.
    #[config(default = "Vec::new()")]
    pub models: Vec<SafetyModel>,
    /// Write every classifier score to metadata field `<score_prefix><name>` (default `true`).
    #[config(default = true)]
    pub write_scores: bool,
    /// Prefix of the score fields (default `"safety_"`).
    #[config(default = "String::from(\"safety_\")")]
    pub score_prefix: String,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl SafetyConfig {
    /// Builder: add a model file with its maximum score.
    pub fn with_model(mut self, path: impl Into<PathBuf>, max_score: f32) -> Self {
        self.models.push(SafetyModel {
            path: path.into(),
            max_score,
        });
        self
    }
}

/// The safety stage: domain blocklist, word blocklist, classifier thresholds, checked in
/// this order.
///
/// The host is taken from [`Document::host`], or from the URL in metadata field
/// [`SafetyConfig::url_field`]. Classifiers run in the order they were added; the first one
/// above its maximum drops the document (later ones are not run). A score that is not a
/// number counts as above every maximum.
///
/// ```
/// use internlm2_datasets::stages::safety::{DomainBlocklist, SafetyStage, WordBlocklist};
/// use internlm2_datasets::{Classifier, Document, Stage};
///
/// struct Shouting;
/// impl Classifier for Shouting {
///     fn name(&self) -> &str { "toxic" }
///     fn score(&self, doc: &Document) -> f32 {
///         let upper = doc.text.chars().filter(|c| c.is_uppercase()).count();
///         upper as f32 / doc.text.chars().count().max(1) as f32
///     }
/// }
///
/// let stage = SafetyStage::new()
///     .with_domains(DomainBlocklist::from_domains(["spam.example"]))
///     .with_words(WordBlocklist::new(["casino"]).unwrap())
///     .with_classifier(Shouting, 0.5);
/// let doc = |text: &str, url: &str| Document::new(text).with_source(url);
/// assert_eq!(stage.apply(doc("hi", "https://www.spam.example/a")).reason(), Some("blocked_domain"));
/// assert_eq!(stage.apply(doc("casino night", "https://ok.org")).reason(), Some("blocked_words"));
/// assert_eq!(stage.apply(doc("LOUD TEXT", "https://ok.org")).reason(), Some("toxic_score"));
/// assert!(stage.apply(doc("A calm sentence.", "https://ok.org")).is_keep());
/// ```
pub struct SafetyStage {
    domains: DomainBlocklist,
    words: WordBlocklist,
    max_word_hits: Option<usize>,
    max_word_hit_ratio: Option<f64>,
    url_field: String,
    checks: ScoredChecks,
}

impl std::fmt::Debug for SafetyStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetyStage")
            .field("domains", &self.domains.len())
            .field("words", &self.words.len())
            .field("max_word_hits", &self.max_word_hits)
            .field("max_word_hit_ratio", &self.max_word_hit_ratio)
            .field("classifiers", &self.checks)
            .finish()
    }
}

impl Default for SafetyStage {
    fn default() -> Self {
        Self::new()
    }
}

impl SafetyStage {
    /// A stage with empty blocklists and no classifier (keeps everything), with the default
    /// word-hit limits of [`SafetyConfig`].
    pub fn new() -> Self {
        let config = SafetyConfig::default();
        Self {
            domains: DomainBlocklist::new(),
            words: WordBlocklist::default(),
            max_word_hits: config.max_word_hits,
            max_word_hit_ratio: config.max_word_hit_ratio,
            url_field: config.url_field,
            checks: ScoredChecks::new(config.score_prefix, config.write_scores),
        }
    }

    /// A stage from a configuration: reads the blocklist files and the model files.
    pub fn from_config(config: &SafetyConfig) -> Result<Self> {
        if let Some(ratio) = config.max_word_hit_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(DataError::config(format!(
                "safety: max_word_hit_ratio = {ratio} is not in [0, 1]"
            )));
        }
        let mut stage = Self::new();
        if let Some(path) = &config.domain_blocklist {
            stage.domains = DomainBlocklist::from_file(path)?;
        }
        if let Some(path) = &config.word_blocklist {
            stage.words = WordBlocklist::from_file(path)?;
        }
        stage.max_word_hits = config.max_word_hits;
        stage.max_word_hit_ratio = config.max_word_hit_ratio;
        stage.url_field = config.url_field.clone();
        stage.checks = ScoredChecks::new(config.score_prefix.clone(), config.write_scores);
        for model in &config.models {
            let classifier = NgramClassifier::load_json(&model.path)?;
            stage.push_classifier(Box::new(classifier), model.max_score);
        }
        Ok(stage)
    }

    /// Builder: use this domain blocklist.
    pub fn with_domains(mut self, domains: DomainBlocklist) -> Self {
        self.domains = domains;
        self
    }

    /// Builder: use this word blocklist.
    pub fn with_words(mut self, words: WordBlocklist) -> Self {
        self.words = words;
        self
    }

    /// Builder: set the word-hit limits (see [`SafetyConfig::max_word_hits`] and
    /// [`SafetyConfig::max_word_hit_ratio`]).
    pub fn with_word_limits(mut self, max_hits: Option<usize>, max_ratio: Option<f64>) -> Self {
        self.max_word_hits = max_hits;
        self.max_word_hit_ratio = max_ratio;
        self
    }

    /// Builder: add a classifier; documents scoring above `max_score` are dropped.
    pub fn with_classifier(
        mut self,
        classifier: impl Classifier + 'static,
        max_score: f32,
    ) -> Self {
        self.push_classifier(Box::new(classifier), max_score);
        self
    }

    /// Add a boxed classifier; documents scoring above `max_score` are dropped.
    pub fn push_classifier(&mut self, classifier: Box<dyn Classifier>, max_score: f32) {
        self.checks.push(classifier, Threshold::Max(max_score));
    }

    /// The domain blocklist.
    pub fn domains(&self) -> &DomainBlocklist {
        &self.domains
    }

    /// The word blocklist.
    pub fn words(&self) -> &WordBlocklist {
        &self.words
    }

    /// The host of a document: from its source, else from its URL metadata field.
    fn host<'d>(&self, doc: &'d Document) -> Option<&'d str> {
        doc.host().or_else(|| {
            let url = doc.metadata.get(&self.url_field)?.as_str()?;
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            let end = rest.find(['/', '?', '#', ':']).unwrap_or(rest.len());
            let host = &rest[..end];
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            (!host.is_empty()).then_some(host)
        })
    }

    fn too_many_words(&self, text: &str) -> bool {
        if self.words.is_empty() {
            return false;
        }
        let hits = self.words.count(text);
        if self.max_word_hits.is_some_and(|max| hits > max) {
            return true;
        }
        self.max_word_hit_ratio
            .is_some_and(|max| hits > 0 && hits as f64 / words(text).count().max(1) as f64 > max)
    }
}

impl Stage for SafetyStage {
    fn name(&self) -> &str {
        "safety"
    }

    fn apply(&self, doc: Document) -> Verdict {
        if let Some(host) = self.host(&doc)
            && self.domains.is_blocked(host)
        {
            return Verdict::drop(doc, "blocked_domain");
        }
        if self.too_many_words(&doc.text) {
            return Verdict::drop(doc, "blocked_words");
        }
        self.checks.apply(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_parsing() {
        assert_eq!(
            parse_entry("  Example.COM.  # note").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            parse_entry("0.0.0.0 ads.example").as_deref(),
            Some("ads.example")
        );
        assert_eq!(parse_entry("*.cdn.example").as_deref(), Some("cdn.example"));
        assert_eq!(
            parse_entry("https://x.example:8080/p").as_deref(),
            Some("x.example")
        );
        assert_eq!(parse_entry("# only a comment"), None);
        assert_eq!(parse_entry("   "), None);
    }
}
