//! The built-in classifier: logistic regression over hashed word uni- and bi-grams
//! (characters of CJK and other unspaced scripts are tokens of their own, so their n-grams are
//! character n-grams), trained by SGD with a fixed seed from labelled examples or a labelled
//! JSONL file (`{"text": ..., "label": 1}`), saved to and loaded from JSON. It implements
//! [`Classifier`], so it serves the quality stage (advertisements, fluency) and the safety
//! stage (toxicity) alike.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use burn::config::Config;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use super::text::is_unspaced;
use crate::error::IoContext;
use crate::{Classifier, DataError, Document, Result};

/// Name written to the `format` field of saved [`NgramClassifier`] files.
const FILE_FORMAT: &str = "internlm2-ngram-classifier";
/// Version of the saved file layout.
const FILE_VERSION: u32 = 1;

/// Configuration of [`NgramClassifier`]: features, training, and the JSONL fields read by
/// [`NgramClassifier::train_jsonl`].
///
/// ```
/// use internlm2_datasets::stages::ngram::NgramConfig;
/// let config = NgramConfig::new("ad".into()).with_epochs(20).with_hash_bits(16);
/// assert_eq!(config.name, "ad");
/// assert_eq!(config.max_order, 2);
/// ```
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
/// `name` is the argument of [`NgramConfig::new`]; [`Default`] names the classifier `"ngram"`.
#[derive(Config, Debug, PartialEq)]
pub struct NgramConfig {
    /// Name of the property the classifier detects (`"ad"`, `"fluent"`, `"toxic"`): drop
    /// reasons are `<name>_score`, metadata fields `quality_<name>` (default `"ngram"`).
    pub name: String,
    /// Features are hashed into `2^hash_bits` weights (default 18, allowed 4..=28).
    #[config(default = 18)]
    pub hash_bits: u32,
    /// Longest n-gram of tokens used as a feature (default 2: unigrams and bigrams).
    #[config(default = 2)]
    pub max_order: usize,
    /// Only the first `max_bytes` bytes of a text are read (default 20,000; 0 reads all).
    #[config(default = 20_000)]
    pub max_bytes: usize,
    /// Passes over the training set (default 10).
    #[config(default = 10)]
    pub epochs: usize,
    /// SGD step size (default 0.5; features are L2-normalised per text).
    #[config(default = 0.5)]
    pub learning_rate: f32,
    /// L2 penalty on the weights a step touches (default 1e-5).
    #[config(default = 1e-5)]
    pub l2: f32,
    /// Seed of the example order (default 42): the same data and seed give the same model.
    #[config(default = 42)]
    pub seed: u64,
    /// JSONL field holding the text (default `"text"`).
    #[config(default = "String::from(\"text\")")]
    pub text_field: String,
    /// JSONL field holding the label (default `"label"`).
    #[config(default = "String::from(\"label\")")]
    pub label_field: String,
    /// The label value of positive examples (default `1`; numbers compare by value, so
    /// `1.0` matches too). Every other value is negative.
    #[config(default = "Value::from(1)")]
    pub positive_label: Value,
}

impl Default for NgramConfig {
    fn default() -> Self {
        Self::new("ngram".to_string())
    }
}

impl NgramConfig {
    /// Builder: set [`Self::name`] (a required argument of [`NgramConfig::new`], so the derive
    /// makes no builder for it).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Check the ranges of the feature and training settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(DataError::config(format!("ngram classifier: {message}")));
        if !(4..=28).contains(&self.hash_bits) {
            return bad(format!("hash_bits = {} is not in 4..=28", self.hash_bits));
        }
        if self.max_order == 0 {
            return bad("max_order must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "learning_rate = {} must be positive",
                self.learning_rate
            ));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return bad(format!("l2 = {} must be non-negative", self.l2));
        }
        Ok(())
    }

    /// Whether a label value means "positive".
    fn is_positive(&self, label: &Value) -> bool {
        match (label.as_f64(), self.positive_label.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => label == &self.positive_label,
        }
    }
}

/// A sparse, L2-normalised feature vector: (weight index, value), indices ascending.
type Features = Vec<(u32, f32)>;

/// A linear classifier over hashed token n-grams (logistic regression).
///
/// Tokens are the lower-cased text split into runs of letters and digits (every digit read as
/// `0`, so prices and phone numbers share features), single characters of unspaced scripts
/// ([`is_unspaced`]), and single punctuation or symbol characters. The features of a text are
/// its token n-grams of orders `1..=max_order`, each hashed (xxh3) to a weight index and a
/// sign, counted, and L2-normalised. The score is `sigmoid(bias + w · x)`.
///
/// Training runs `epochs` passes of plain SGD on the logistic loss over the examples in an
/// order shuffled by a SplitMix64 generator seeded with [`NgramConfig::seed`], so a model is
/// reproducible from its data and configuration.
///
/// ```
/// use internlm2_datasets::stages::ngram::{NgramClassifier, NgramConfig};
/// let examples = [
///     ("Buy now! Huge discount, free shipping, click here.", true),
///     ("Limited offer: buy two, get one free. Click to order now!", true),
///     ("The committee met on Tuesday to discuss the river survey.", false),
///     ("Researchers measured the temperature of the lake every week.", false),
/// ];
/// let config = NgramConfig::new("ad".into()).with_epochs(30);
/// let model = NgramClassifier::train(examples, config).unwrap();
/// assert!(model.score_text("Click here to buy now with free shipping!") > 0.5);
/// assert!(model.score_text("The survey of the lake was discussed on Tuesday.") < 0.5);
/// let copy = NgramClassifier::from_json(&model.to_json()).unwrap();
/// assert_eq!(copy.score_text("buy now"), model.score_text("buy now"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NgramClassifier {
    config: NgramConfig,
    bias: f32,
    weights: Vec<f32>,
}

/// The JSON layout of a saved classifier (only non-zero weights are stored).
#[derive(Serialize, Deserialize)]
struct ModelFile {
    format: String,
    version: u32,
    config: NgramConfig,
    bias: f32,
    weights: Vec<(u32, f32)>,
}

impl NgramClassifier {
    /// Train on `(text, is_positive)` examples. Fails when the configuration is invalid or
    /// the examples do not contain both classes.
    pub fn train<I, S>(examples: I, config: NgramConfig) -> Result<Self>
    where
        I: IntoIterator<Item = (S, bool)>,
        S: AsRef<str>,
    {
        config.validate()?;
        let mut model = Self {
            bias: 0.0,
            weights: vec![0.0; 1 << config.hash_bits],
            config,
        };
        let data: Vec<(Features, f32)> = examples
            .into_iter()
            .map(|(text, label)| (model.features(text.as_ref()), if label { 1.0 } else { 0.0 }))
            .collect();
        let positives = data.iter().filter(|(_, y)| *y == 1.0).count();
        if positives == 0 || positives == data.len() {
            return Err(DataError::config(format!(
                "ngram classifier '{}': training needs positive and negative examples \
                 ({positives} positive of {})",
                model.config.name,
                data.len()
            )));
        }
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut rng = SplitMix64(model.config.seed);
        let (rate, l2) = (model.config.learning_rate, model.config.l2);
        for _ in 0..model.config.epochs {
            rng.shuffle(&mut order);
            for &i in &order {
                let (x, y) = &data[i];
                let gradient = model.probability(x) - y;
                for &(j, v) in x {
                    let w = &mut model.weights[j as usize];
                    *w -= rate * (gradient * v + l2 * *w);
                }
                model.bias -= rate * gradient;
            }
        }
        Ok(model)
    }

    /// Train on a labelled JSONL file (see [`NgramClassifier::read_examples`]).
    pub fn train_jsonl(path: impl AsRef<Path>, config: NgramConfig) -> Result<Self> {
        let examples = Self::read_examples(path, &config)?;
        Self::train(examples, config)
    }

    /// Read labelled examples from a JSONL file: one object per line with the text in
    /// [`NgramConfig::text_field`] and the label in [`NgramConfig::label_field`] (positive when
    /// equal to [`NgramConfig::positive_label`]). Blank lines are skipped; a line without
    /// either field is an error.
    pub fn read_examples(
        path: impl AsRef<Path>,
        config: &NgramConfig,
    ) -> Result<Vec<(String, bool)>> {
        let path = path.as_ref();
        let reader = BufReader::new(File::open(path).at(path)?);
        let mut examples = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line.at(path)?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| DataError::BadRecord {
                path: path.to_path_buf(),
                line: i as u64 + 1,
                message,
            };
            let record: Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
            let text = record
                .get(&config.text_field)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("no string field '{}'", config.text_field)))?;
            let label = record
                .get(&config.label_field)
                .ok_or_else(|| bad(format!("no field '{}'", config.label_field)))?;
            examples.push((text.to_string(), config.is_positive(label)));
        }
        Ok(examples)
    }

    /// The configuration the model was trained with.
    pub fn config(&self) -> &NgramConfig {
        &self.config
    }

    /// Builder: rename the classifier (changes drop reasons and metadata fields, not scores).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The probability that `text` has the property.
    pub fn score_text(&self, text: &str) -> f32 {
        self.probability(&self.features(text))
    }

    /// Fraction of `(text, is_positive)` examples on the right side of 0.5.
    pub fn accuracy<I, S>(&self, examples: I) -> f32
    where
        I: IntoIterator<Item = (S, bool)>,
        S: AsRef<str>,
    {
        let (mut right, mut total) = (0usize, 0usize);
        for (text, label) in examples {
            total += 1;
            right += usize::from((self.score_text(text.as_ref()) > 0.5) == label);
        }
        if total == 0 {
            0.0
        } else {
            right as f32 / total as f32
        }
    }

    /// The model as JSON (configuration, bias, non-zero weights).
    pub fn to_json(&self) -> String {
        let file = ModelFile {
            format: FILE_FORMAT.to_string(),
            version: FILE_VERSION,
            config: self.config.clone(),
            bias: self.bias,
            weights: self
                .weights
                .iter()
                .enumerate()
                .filter(|(_, w)| **w != 0.0)
                .map(|(i, w)| (i as u32, *w))
                .collect(),
        };
        serde_json::to_string(&file).unwrap_or_default()
    }

    /// A model from [`NgramClassifier::to_json`] output.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::parse(json).map_err(|message| DataError::Corrupt {
            path: PathBuf::from("<json>"),
            message,
        })
    }

    /// Save the model as JSON.
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()).at(path)
    }

    /// Load a model saved with [`NgramClassifier::save_json`].
    pub fn load_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).at(path)?;
        Self::parse(&json).map_err(|message| DataError::Corrupt {
            path: path.to_path_buf(),
            message,
        })
    }

    fn parse(json: &str) -> std::result::Result<Self, String> {
        let file: ModelFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if file.format != FILE_FORMAT || file.version != FILE_VERSION {
            return Err(format!(
                "not an n-gram classifier of version {FILE_VERSION} (format '{}', version {})",
                file.format, file.version
            ));
        }
        file.config.validate().map_err(|e| e.to_string())?;
        let mut weights = vec![0.0; 1 << file.config.hash_bits];
        for (i, w) in file.weights {
            let slot = weights
                .get_mut(i as usize)
                .ok_or_else(|| format!("weight index {i} out of range"))?;
            *slot = w;
        }
        Ok(Self {
            config: file.config,
            bias: file.bias,
            weights,
        })
    }

    fn probability(&self, x: &Features) -> f32 {
        let z = self.bias
            + x.iter()
                .map(|&(j, v)| self.weights[j as usize] * v)
                .sum::<f32>();
        1.0 / (1.0 + (-z).exp())
    }

    /// The hashed, normalised n-gram features of a text.
    fn features(&self, text: &str) -> Features {
        let cfg = &self.config;
        let text = prefix(text, cfg.max_bytes);
        let tokens = token_hashes(&text.to_lowercase());
        let shift = 64 - cfg.hash_bits;
        let mut features: Features = Vec::new();
        for order in 1..=cfg.max_order {
            for gram in tokens.windows(order) {
                let h = gram.iter().fold(order as u64, |h, t| mix(h ^ t));
                let sign = if h & 1 == 0 { 1.0 } else { -1.0 };
                features.push(((h >> shift) as u32, sign));
            }
        }
        features.sort_unstable_by_key(|f| f.0);
        let mut merged: Features = Vec::with_capacity(features.len());
        for (j, v) in features {
            match merged.last_mut() {
                Some(last) if last.0 == j => last.1 += v,
                _ => merged.push((j, v)),
            }
        }
        merged.retain(|f| f.1 != 0.0);
        let norm = merged.iter().map(|f| f.1 * f.1).sum::<f32>().sqrt();
        if norm > 0.0 {
            merged.iter_mut().for_each(|f| f.1 /= norm);
        }
        merged
    }
}

impl Classifier for NgramClassifier {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn score(&self, doc: &Document) -> f32 {
        self.score_text(&doc.text)
    }
}

/// The longest prefix of at most `max` bytes at a character boundary (`0`: all).
fn prefix(text: &str, max: usize) -> &str {
    if max == 0 || text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A 64-bit finaliser (SplitMix64's).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes of the tokens of a lower-cased text (see [`NgramClassifier`]).
fn token_hashes(text: &str) -> Vec<u64> {
    let mut hashes = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, hashes: &mut Vec<u64>| {
        if !word.is_empty() {
            hashes.push(xxh3_64(word.as_bytes()));
            word.clear();
        }
    };
    for c in text.chars() {
        if c.is_alphanumeric() && !is_unspaced(c) {
            word.push(if c.is_numeric() { '0' } else { c });
            continue;
        }
        flush(&mut word, &mut hashes);
        if !c.is_whitespace() {
            let mut buf = [0u8; 4];
            hashes.push(xxh3_64(c.encode_utf8(&mut buf).as_bytes()));
        }
    }
    flush(&mut word, &mut hashes);
    hashes
}

/// SplitMix64: a small generator whose output is fixed by its seed on every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        let out = mix(self.0);
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        out
    }

    /// Fisher-Yates shuffle.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_scripts_and_digits() {
        // "price", "0" (from 99), "$", "中", "文" -> 5 tokens; 49 and 99 hash alike.
        assert_eq!(token_hashes("price 99$中文").len(), 5);
        assert_eq!(token_hashes("49"), token_hashes("99"));
    }

    #[test]
    fn splitmix_is_fixed() {
        // Reference values of SplitMix64 with seed 0 (Vigna's splitmix64.c).
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next(), 0x6E78_9E6A_A1B9_65F4);
    }
}
