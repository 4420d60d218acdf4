//! Constrained decoding against the real 92,544-piece InternLM2 vocabulary: random logits
//! (what a model with random weights produces) masked by the constraint always give a call
//! that parses and whose arguments validate against the function's schema; the same random
//! logits without the constraint give nothing of the kind.

use std::sync::Arc;

use internlm2::Tokenizer;
use internlm2::chat::{ToolCall, parse_assistant};
use internlm2_serve::constraint::{ConstraintFactory, FunctionSchema, TurnGrammar};
use internlm2_serve::engine::TokenConstraint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn tokenizer() -> Arc<Tokenizer> {
    let fixtures = std::env::var_os("INTERNLM2_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
        });
    let path = fixtures.join("tokenizer/tokenizer_internlm2.model");
    Arc::new(Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn weather() -> FunctionSchema {
    FunctionSchema {
        name: "get_weather".into(),
        parameters: Some(json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Tokyo", "New York"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "note": {"type": "string", "maxLength": 12}
            },
            "required": ["city", "days"],
            "additionalProperties": false
        })),
    }
}

fn no_arguments() -> FunctionSchema {
    FunctionSchema {
        name: "now".into(),
        parameters: None,
    }
}

/// Validates `weather()`'s schema by hand (every keyword it uses).
fn weather_arguments_valid(args: &Value) -> Result<(), String> {
    let object = args.as_object().ok_or("not an object")?;
    for key in object.keys() {
        if !["city", "days", "note"].contains(&key.as_str()) {
            return Err(format!("extra key {key}"));
        }
    }
    let city = object
        .get("city")
        .and_then(Value::as_str)
        .ok_or("no city")?;
    if !["Paris", "Tokyo", "New York"].contains(&city) {
        return Err(format!("city {city}"));
    }
    let days = object
        .get("days")
        .and_then(Value::as_f64)
        .ok_or("no number days")?;
    if days.fract() != 0.0 || !(1.0..=14.0).contains(&days) {
        return Err(format!("days {days}"));
    }
    if let Some(note) = object.get("note") {
        let note = note.as_str().ok_or("note not a string")?;
        if note.chars().count() > 12 {
            return Err(format!("note too long: {note:?}"));
        }
    }
    Ok(())
}

/// Samples up to `steps` tokens from random logits (a random model), through `constraint` if
/// given; stops at `<|im_end|>` or when the constraint is complete.
fn random_model_output(
    tokenizer: &Tokenizer,
    mut constraint: Option<&mut dyn TokenConstraint>,
    seed: u64,
    steps: usize,
) -> String {
    let im_end = tokenizer.chat_tokens().unwrap().im_end;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tokens = Vec::new();
    let mut masking = std::time::Duration::ZERO;
    for _ in 0..steps {
        let mut logits: Vec<f32> = (0..tokenizer.vocab_size())
            .map(|_| rng.random::<f32>() * 8.0)
            .collect();
        if let Some(c) = constraint.as_deref_mut() {
            let started = std::time::Instant::now();
            c.mask(&mut logits).expect("mask");
            masking += started.elapsed();
        }
        let pick = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap();
        if pick == im_end {
            break;
        }
        tokens.push(pick);
        if let Some(c) = constraint.as_deref_mut() {
            c.commit(pick).expect("commit");
            if c.is_complete() {
                break;
            }
        }
    }
    if constraint.is_some() && !tokens.is_empty() {
        // For information (not a timing test): what masking the 92,544 logits costs per token.
        eprintln!(
            "seed {seed}: {} tokens, mask {:.0} us/token",
            tokens.len(),
            masking.as_secs_f64() * 1e6 / tokens.len() as f64
        );
    }
    tokenizer.decode(&tokens).unwrap()
}

#[test]
fn forced_calls_from_random_logits_parse_and_validate() {
    let tokenizer = tokenizer();
    let started = std::time::Instant::now();
    let factory = ConstraintFactory::new(tokenizer.clone()).unwrap();
    eprintln!(
        "vocabulary indexed in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    let mut total_calls = 0;
    for seed in 0..6 {
        let grammar = TurnGrammar::Calls {
            functions: vec![weather(), no_arguments()],
            parallel: true,
        };
        let mut constraint = factory.build(&grammar).unwrap();
        let text = random_model_output(&tokenizer, Some(&mut constraint), seed, 400);
        let message =
            parse_assistant(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
        assert_eq!(message.content, "", "seed {seed}: {text:?}");
        let calls: Vec<&ToolCall> = message.calls().collect();
        assert!(!calls.is_empty(), "seed {seed}: {text:?}");
        for call in calls {
            match call {
                ToolCall::Plugin { name, parameters } if name == "get_weather" => {
                    weather_arguments_valid(parameters)
                        .unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
                }
                ToolCall::Plugin { name, parameters } if name == "now" => {
                    assert_eq!(parameters, &json!({}), "seed {seed}: {text:?}");
                }
                other => panic!("seed {seed}: undeclared call {other:?}"),
            }
            total_calls += 1;
        }
        // The InternLM2 layout: `{"name": "...", "parameters": {...}}` as json.dumps writes it.
        assert!(
            text.starts_with("<|action_start|><|plugin|>\n{\"name\": \""),
            "{text:?}"
        );
    }
    assert!(total_calls >= 6);
    // The same random logits without the constraint produce no usable call.
    for seed in 0..6 {
        let text = random_model_output(&tokenizer, None, seed, 60);
        let parsed = parse_assistant(&text);
        assert!(
            parsed.map(|m| m.tool_call.is_none()).unwrap_or(true),
            "seed {seed}: unconstrained random output made a call: {text:?}"
        );
    }
}

#[test]
fn one_named_call_then_only_the_end_of_turn() {
    let tokenizer = tokenizer();
    let factory = ConstraintFactory::new(tokenizer.clone()).unwrap();
    let grammar = TurnGrammar::Calls {
        functions: vec![weather()],
        parallel: false,
    };
    for seed in 10..13 {
        let mut constraint = factory.build(&grammar).unwrap();
        let text = random_model_output(&tokenizer, Some(&mut constraint), seed, 400);
        let message = parse_assistant(&text).unwrap();
        assert_eq!(message.calls().count(), 1, "{text:?}");
        assert!(text.ends_with("<|action_end|>"), "{text:?}");
        // The grammar is complete after the call; only <|im_end|> is allowed then.
        assert!(constraint.is_complete());
        let mut logits = vec![0.0f32; tokenizer.vocab_size()];
        constraint.mask(&mut logits).unwrap();
        let allowed: Vec<usize> = (0..logits.len())
            .filter(|&i| logits[i] > f32::NEG_INFINITY)
            .collect();
        assert_eq!(
            allowed,
            vec![tokenizer.chat_tokens().unwrap().im_end as usize]
        );
    }
}

#[test]
fn json_content_follows_the_schema() {
    let tokenizer = tokenizer();
    let factory = ConstraintFactory::new(tokenizer.clone()).unwrap();
    let schema = json!({
        "type": "array",
        "items": {"type": "integer", "minimum": -5, "maximum": 5},
        "minItems": 1,
        "maxItems": 4
    });
    for seed in 20..24 {
        let mut constraint = factory
            .build(&TurnGrammar::Json {
                schema: schema.clone(),
                calls: vec![],
            })
            .unwrap();
        let text = random_model_output(&tokenizer, Some(&mut constraint), seed, 200);
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        let items = value.as_array().unwrap();
        assert!((1..=4).contains(&items.len()), "{text}");
        // JSON integers (`-0` included, which serde_json reads as a float).
        assert!(
            items.iter().all(|v| v
                .as_f64()
                .is_some_and(|x| x.fract() == 0.0 && (-5.0..=5.0).contains(&x))),
            "{text}"
        );
    }
}

#[test]
fn unusable_schemas_are_typed_errors() {
    let tokenizer = tokenizer();
    let factory = ConstraintFactory::new(tokenizer).unwrap();
    let bad_schema = TurnGrammar::Json {
        schema: json!({"type": "no-such-type"}),
        calls: vec![],
    };
    assert!(factory.build(&bad_schema).is_err());
    let bad_name = TurnGrammar::Calls {
        functions: vec![FunctionSchema {
            name: "a b".into(),
            parameters: None,
        }],
        parallel: false,
    };
    assert!(factory.build(&bad_name).is_err());
}
