//! Validation of SentencePiece `precompiled_charsmap`s (the normaliser of a `tokenizer.model`,
//! or a `Precompiled` normaliser in a `tokenizer.json`) before the `tokenizers` library gets
//! them: `spm_precompiled` trusts every offset of the trie and indexes out of bounds (a panic)
//! at encode time on a hostile one, and `tokenizers` panics on a `Precompiled` normaliser whose
//! charsmap does not parse.

use base64::Engine;
use serde_json::Value;

/// Checks a SentencePiece `precompiled_charsmap` (a double-array trie over UTF-8 bytes, then
/// NUL-terminated replacement strings) so that the normaliser built from it never indexes out
/// of bounds: every node reachable from the root must have all 256 child slots inside the
/// array, and every leaf value must point at a character boundary of the replacement text.
/// The unit layout is Darts-clone's (label in bits 0-7 and 31, leaf flag in bit 8, offset in
/// bits 10-31 shifted by 8 when bit 9 is set, value in bits 0-30), as `spm_precompiled` reads
/// it.
pub(super) fn check(map: &[u8]) -> Result<(), String> {
    let Some(head) = map.get(..4) else {
        return Err("shorter than its 4-byte trie length".into());
    };
    let trie_bytes = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
    let Some(trie) = map.get(4..4 + trie_bytes) else {
        return Err(format!("trie of {trie_bytes} bytes in {} bytes", map.len()));
    };
    let normalized = std::str::from_utf8(&map[4 + trie_bytes..])
        .map_err(|_| "replacement text is not UTF-8".to_string())?;
    let units: Vec<usize> = trie
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) as usize)
        .collect();
    let offset = |u: usize| (u >> 10) << ((u & (1 << 9)) >> 6);
    let label = |u: usize| u & ((1 << 31) | 0xFF);
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let value = |u: usize| u & ((1 << 31) - 1);
    let Some(&root) = units.first() else {
        return Err("empty trie".into());
    };
    let mut seen = vec![false; units.len()];
    let mut stack = vec![offset(root)];
    while let Some(node) = stack.pop() {
        // Every byte of the input is looked up at `node ^ byte`.
        if (node | 0xFF) >= units.len() {
            return Err(format!("node {node} has children outside the trie"));
        }
        if std::mem::replace(&mut seen[node], true) {
            continue;
        }
        for byte in 1..=0xFFusize {
            let unit = units[node ^ byte];
            if label(unit) != byte {
                continue;
            }
            let next = node ^ byte ^ offset(unit);
            if has_leaf(unit) {
                let at = units
                    .get(next)
                    .map(|&u| value(u))
                    .ok_or_else(|| format!("leaf {next} outside the trie"))?;
                if !normalized.is_char_boundary(at) {
                    return Err(format!("replacement at byte {at} is not in the text"));
                }
            }
            stack.push(next);
        }
    }
    Ok(())
}

/// Checks every `Precompiled` normaliser of a parsed `tokenizer.json`: its charsmap must be
/// base64 that [`check`] accepts.
pub(super) fn check_json(value: &Value) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("Precompiled") {
                let text = map
                    .get("precompiled_charsmap")
                    .and_then(Value::as_str)
                    .ok_or("a Precompiled normalizer without a precompiled_charsmap string")?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| format!("precompiled_charsmap is not base64: {e}"))?;
                check(&bytes).map_err(|e| format!("precompiled_charsmap: {e}"))?;
            }
            map.values().try_for_each(check_json)
        }
        Value::Array(items) => items.iter().try_for_each(check_json),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_out_of_range_tries_are_refused() {
        assert!(check(&[1, 2]).is_err());
        // A trie length past the end of the map.
        assert!(check(&[0xFF, 0, 0, 0, 0, 0, 0, 0]).is_err());
        // One unit whose root offset points far outside the trie.
        let mut map = 4u32.to_le_bytes().to_vec();
        map.extend_from_slice(&(1000u32 << 10).to_le_bytes());
        assert!(check(&map).is_err());
        let json = serde_json::json!({"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap": "not base64!"}]}});
        assert!(check_json(&json).is_err());
        let json = serde_json::json!({"normalizer": {"type": "Precompiled"}});
        assert!(check_json(&json).is_err());
    }
}
