//! The tokenizer against the reference SentencePiece library: every vector of
//! `../shared/fixtures/tokenizer/vectors.jsonl` (ids from `sentencepiece` on InternLM2's
//! `tokenizer.model`, chat tokens as single ids), round trips, and streaming decode.

mod common;

use internlm2::Tokenizer;

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(common::fixtures().join("tokenizer/tokenizer_internlm2.model"))
        .expect("tokenizer.model loads")
}

fn vectors() -> Vec<(String, Vec<u32>)> {
    let text = std::fs::read_to_string(common::fixtures().join("tokenizer/vectors.jsonl")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32);
            (v["text"].as_str().unwrap().to_string(), ids.collect())
        })
        .collect()
}

#[test]
fn reproduces_every_reference_vector() {
    let tok = tokenizer();
    let vectors = vectors();
    assert!(vectors.len() >= 28);
    let mut failures = Vec::new();
    for (text, expected) in &vectors {
        let ids = tok.encode(text, true).unwrap();
        if &ids != expected {
            failures.push(format!("{text:?}\n  ours {ids:?}\n  ref  {expected:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn decode_inverts_encode() {
    let tok = tokenizer();
    for (text, _) in vectors() {
        let ids = tok.encode(&text, true).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
}

#[test]
fn streaming_decode_never_breaks_utf8_and_equals_full_decode() {
    let tok = tokenizer();
    for (text, _) in vectors() {
        let ids = tok.encode(&text, false).unwrap();
        let mut stream = tok.incremental_decoder();
        let mut joined = String::new();
        for &id in &ids {
            let delta = stream.push(id).unwrap();
            assert!(
                !delta.contains('\u{FFFD}'),
                "{text:?}: broken character in {delta:?}"
            );
            joined.push_str(&delta);
        }
        joined.push_str(&stream.finish());
        assert_eq!(joined, text);
    }
}

#[test]
fn specials_and_vocabulary() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 92_544);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    let chat = tok.chat_tokens().expect("chat tokens");
    assert_eq!(
        [
            chat.plugin,
            chat.interpreter,
            chat.action_end,
            chat.action_start,
            chat.im_end,
            chat.im_start
        ],
        [92538, 92539, 92540, 92541, 92542, 92543]
    );
    // Control pieces are not matched in text; BOS/EOS decode to nothing.
    assert_ne!(tok.encode("</s>", false).unwrap(), vec![2]);
    assert_eq!(tok.decode(&[1, 9843, 2]).unwrap(), "Hello");
    // A literal NUL is not piece 354 (SentencePiece treats it as unused): it falls back to <0x00>.
    assert_eq!(tok.encode("\0", false).unwrap(), vec![3]);
    assert!(matches!(
        tok.decode(&[92_544]),
        Err(internlm2::TokenizerError::UnknownId { id: 92_544, .. })
    ));
}

#[test]
fn invalid_utf8_from_byte_pieces_is_replaced_like_lossy_decoding() {
    let tok = tokenizer();
    // <0xE4> <0xBD> (an incomplete 3-byte sequence) then "a".
    let ids = [3 + 0xE4, 3 + 0xBD, 264];
    let full = tok.decode(&ids).unwrap();
    assert_eq!(full, "\u{FFFD}a");
    let mut stream = tok.incremental_decoder();
    let mut joined = String::new();
    for id in ids {
        joined += &stream.push(id).unwrap();
    }
    joined += &stream.finish();
    assert_eq!(joined, full);
}

#[test]
fn bad_model_files_give_typed_errors() {
    let err =
        Tokenizer::from_sentencepiece_bytes(b"\xff\xff\xff not a protobuf", "junk").unwrap_err();
    assert!(
        matches!(err, internlm2::TokenizerError::InvalidModel { .. }),
        "{err}"
    );
    let err = Tokenizer::from_file("/nonexistent/tokenizer.model").unwrap_err();
    assert!(matches!(err, internlm2::TokenizerError::Io { .. }), "{err}");
}

#[test]
fn tokenizer_json_export_encodes_and_decodes_the_same() {
    let sp = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    sp.save_json(&path).unwrap();
    let json = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(json.vocab_size(), sp.vocab_size());
    assert_eq!(json.chat_tokens(), sp.chat_tokens());
    for (text, expected) in vectors() {
        let ids = json.encode(&text, true).unwrap();
        assert_eq!(ids, expected, "{text:?}");
        assert_eq!(json.decode(&ids).unwrap(), text, "{text:?}");
        let mut stream = json.incremental_decoder();
        let mut joined = String::new();
        for id in &ids[1..] {
            joined += &stream.push(*id).unwrap();
        }
        joined += &stream.finish();
        assert_eq!(joined, text);
    }
}

#[test]
fn offsets_point_into_the_text() {
    let tok = tokenizer();
    let text = "<|im_start|>user\nHi 你好<|im_end|>";
    let (ids, offsets) = tok.encode_with_offsets(text, true).unwrap();
    assert_eq!(ids, tok.encode(text, true).unwrap());
    assert_eq!(offsets[0], (0, 0));
    assert_eq!(&text[offsets[1].0..offsets[1].1], "<|im_start|>");
    assert_eq!(&text[offsets.last().unwrap().0..], "<|im_end|>");
}
