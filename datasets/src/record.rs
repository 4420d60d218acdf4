//! The document record every stage reads and writes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One document of the corpus.
///
/// Serialised as one JSON object per line (JSONL) or one Parquet row. Only `text` is required
/// on input; missing fields default to empty / `None`, and unknown JSON fields are kept in
/// `metadata` so that nothing a source carries is lost.
///
/// ```
/// use internlm2_datasets::Document;
/// let doc: Document = serde_json::from_str(r#"{"text": "hello", "url": "https://a.org"}"#).unwrap();
/// assert_eq!(doc.text, "hello");
/// assert_eq!(doc.metadata["url"], "https://a.org");
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Document {
    /// Stable unique id (the `format` stage assigns one when empty).
    #[serde(default)]
    pub id: String,
    /// The text.
    pub text: String,
    /// Where the document comes from: a URL for web text, a repository path for code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// ISO 639-1 language code (set by the `format` stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Crawl time in seconds since the Unix epoch, or a dump number: larger means newer.
    /// Deduplication keeps the newest copy of a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// Anything else: scores written by stages, fields of the source format.
    #[serde(default, flatten)]
    pub metadata: Map<String, Value>,
}

impl Document {
    /// A document with text only.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// Builder: set the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Builder: set the source.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Builder: set the timestamp.
    pub fn with_timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Builder: set a metadata field.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The host of `source` when it is a URL (`https://www.example.org/a` -> `www.example.org`).
    pub fn host(&self) -> Option<&str> {
        let url = self.source.as_deref()?;
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        };
        (!host.is_empty()).then_some(host)
    }

    /// A numeric field used to rank copies: `"timestamp"` reads [`Document::timestamp`],
    /// any other name reads a numeric metadata field.
    pub fn priority(&self, field: &str) -> Option<f64> {
        if field == "timestamp" {
            return self.timestamp.map(|t| t as f64);
        }
        self.metadata.get(field).and_then(Value::as_f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parsing() {
        let d = |s: &str| Document::new("").with_source(s);
        assert_eq!(
            d("https://user@Sub.Example.org:8080/x?y").host(),
            Some("Sub.Example.org")
        );
        assert_eq!(d("example.org/path").host(), Some("example.org"));
        assert_eq!(Document::new("").host(), None);
    }

    #[test]
    fn unknown_fields_round_trip() {
        let line = r#"{"id":"a","text":"t","timestamp":3,"url":"u","score":0.5}"#;
        let doc: Document = serde_json::from_str(line).unwrap();
        assert_eq!(doc.timestamp, Some(3));
        assert_eq!(doc.priority("score"), Some(0.5));
        let back: Document = serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        assert_eq!(back, doc);
    }
}
