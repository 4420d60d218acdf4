//! Hand-written configuration files that name only the fields they change.
//!
//! The configurations of this crate derive burn's `Config`: their builders, `save` and `load`
//! come from it, and their serde form names every field (a missing `Option` field reads as
//! `None`, any other missing field is an error). [`from_partial_json`] reads the short files
//! people write by hand instead: the given JSON is laid over the configuration's defaults,
//! object by object, so that `{"max_word_hits": 2}` is the default safety configuration with
//! one value changed.
//!
//! ```
//! use internlm2_datasets::{SafetyConfig, from_partial_json};
//! let config: SafetyConfig = from_partial_json(r#"{"max_word_hit_ratio": 0.01}"#).unwrap();
//! assert_eq!(config.max_word_hits, Some(0)); // the default, not `None`
//! assert_eq!(config.max_word_hit_ratio, Some(0.01));
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Reads `json` as a `T` whose missing fields (at any depth of nested objects) take the values
/// of `T::default()`. Fields `T` does not have are ignored, as serde does; a present field of
/// the wrong type is an error.
pub fn from_partial_json<T: Serialize + DeserializeOwned + Default>(
    json: &str,
) -> serde_json::Result<T> {
    let given: Value = serde_json::from_str(json)?;
    let mut merged = serde_json::to_value(T::default())?;
    lay_over(&mut merged, given);
    serde_json::from_value(merged)
}

/// Replaces the values of `base` by those of `given`, merging objects key by key.
fn lay_over(base: &mut Value, given: Value) {
    match (base, given) {
        (Value::Object(base), Value::Object(given)) => {
            for (key, value) in given {
                match base.get_mut(&key) {
                    Some(slot) => lay_over(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, given) => *base = given,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FormatConfig, QualityConfig, TextPipelineConfig};

    #[test]
    fn missing_fields_take_the_defaults_at_every_depth() {
        let format: FormatConfig = from_partial_json(r#"{"id_prefix": "web-"}"#).unwrap();
        assert_eq!(
            format,
            FormatConfig::default().with_id_prefix("web-".into())
        );
        let pipeline: TextPipelineConfig =
            from_partial_json(r#"{"format": {"collapse_spaces": false}}"#).unwrap();
        let mut want = TextPipelineConfig::default();
        want.format.collapse_spaces = false;
        assert_eq!(pipeline, want);
        let quality: QualityConfig = from_partial_json("{}").unwrap();
        assert_eq!(quality, QualityConfig::default());
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(from_partial_json::<FormatConfig>(r#"{"collapse_spaces": "yes"}"#).is_err());
        assert!(from_partial_json::<FormatConfig>("[1, 2]").is_err());
        assert!(from_partial_json::<FormatConfig>("{").is_err());
    }
}
