//! Property tests (issue 16): random assistant-turn text for the chat parser, random text and
//! ids for InternLM2's tokenizer (the reference `tokenizer.model` of the fixtures, and the same
//! pipeline saved as `tokenizer.json`) and its streaming decoder. Each must return `Ok` or a
//! typed error within the time bound; what the API promises is checked too: ids decode exactly
//! when they are inside the vocabulary, encoded ids are inside it, and the streaming deltas of
//! a SentencePiece model concatenate to the full decode.

mod common;

use std::sync::OnceLock;

use common::{CASE_LIMIT, cases, within};
use internlm2::Tokenizer;
use internlm2::chat::{self, parse_assistant};
use proptest::prelude::*;

fn internlm2_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        Tokenizer::from_file(common::fixtures().join("tokenizer/tokenizer_internlm2.model"))
            .expect("the reference tokenizer loads")
    })
}

/// The same pipeline through `tokenizer.json` (decoded by the pipeline, not the byte table).
fn internlm2_json_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        internlm2_tokenizer().save_json(&path).unwrap();
        Tokenizer::from_file(&path).unwrap()
    })
}

/// Text that looks like what a chat model writes: protocol tokens, JSON and code fragments,
/// and arbitrary Unicode.
fn assistant_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => Just(chat::ACTION_START.to_string()),
        2 => Just(chat::ACTION_END.to_string()),
        2 => Just(chat::PLUGIN.to_string()),
        2 => Just(chat::INTERPRETER.to_string()),
        1 => Just(chat::IM_END.to_string()),
        1 => Just(chat::IM_START.to_string()),
        2 => Just("\n".to_string()),
        2 => Just("```".to_string()),
        1 => Just("```python\n".to_string()),
        2 => Just("{\"name\": \"f\", \"parameters\": {\"a\": 1}}".to_string()),
        1 => Just("\"arguments\"".to_string()),
        3 => prop_oneof![Just("{"), Just("}"), Just("["), Just("]"), Just("\""), Just(":"), Just(",")]
            .prop_map(str::to_string),
        1 => (1usize..200).prop_map(|n| "[".repeat(n)),
        4 => "\\PC{0,12}",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(cases(3000))]

    /// The chat parser: typed errors only; a parsed call renders back.
    #[test]
    fn assistant_turns_parse_or_fail_typed(text in assistant_text()) {
        within(CASE_LIMIT, move || {
            if let Ok(message) = parse_assistant(&text) {
                assert!(!message.content.contains(chat::ACTION_START));
                if message.tool_call.is_some() {
                    chat::render_message(&message).expect("a parsed call renders");
                }
            }
        });
    }

    /// Random text through the reference tokenizer: every id is inside the vocabulary and the
    /// ids decode; the streaming deltas add up to the full decode.
    #[test]
    fn random_text_encodes_inside_the_vocabulary(text in "\\PC{0,48}|(<\\|[a-z_]{0,12}\\|>| |\\n|\\t|\\u{FFFD}|.){0,24}") {
        within(CASE_LIMIT, move || {
            let tokenizer = internlm2_tokenizer();
            let ids = tokenizer.encode(&text, true).expect("any text encodes");
            assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
            let decoded = tokenizer.decode(&ids).expect("own ids decode");
            assert_eq!(streamed(tokenizer, &ids).expect("own ids stream"), decoded);
        });
    }

    /// Random ids: a decode is `Ok` exactly when every id is inside the vocabulary, and the
    /// streamed text of a SentencePiece model equals the full decode (never half a character).
    #[test]
    fn random_ids_decode_or_fail_typed(
        ids in proptest::collection::vec(
            prop_oneof![
                8 => 0u32..92_544,
                4 => 3u32..259, // byte pieces: broken UTF-8 sequences
                1 => 92_530u32..92_560,
                1 => any::<u32>(),
            ],
            0..48,
        ),
    ) {
        within(CASE_LIMIT, move || {
            let tokenizer = internlm2_tokenizer();
            let inside = ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size());
            let decoded = tokenizer.decode(&ids);
            assert_eq!(decoded.is_ok(), inside, "{decoded:?}");
            let streamed = streamed(tokenizer, &ids);
            assert_eq!(streamed.is_ok(), inside);
            if let (Ok(a), Ok(b)) = (decoded, streamed) {
                assert_eq!(a, b);
            }
            // The tokenizer.json pipeline: typed errors only.
            let json = internlm2_json_tokenizer();
            assert_eq!(json.decode(&ids).is_ok(), inside);
            let _ = streamed_lossy(json, &ids);
        });
    }
}

/// The streaming decoder's deltas and final flush, concatenated.
fn streamed(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, internlm2::TokenizerError> {
    let mut stream = tokenizer.incremental_decoder();
    let mut text = String::new();
    for &id in ids {
        text += &stream.push(id)?;
    }
    text += &stream.finish();
    Ok(text)
}

/// Like [`streamed`], but keeps going past ids the tokenizer refuses.
fn streamed_lossy(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let mut stream = tokenizer.incremental_decoder();
    let mut text = String::new();
    for &id in ids {
        text += &stream.push(id).unwrap_or_default();
    }
    text + &stream.finish()
}
