//! The grammars behind `tool_choice` and `response_format`, written in llguidance's Lark
//! dialect: InternLM2's call format with the function name fixed and the arguments under the
//! function's JSON schema, and JSON content under a schema.
//!
//! A call is generated exactly as the released models write one (SPEC 4):
//!
//! ```text
//! <|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Paris"}}<|action_end|>
//! ```
//!
//! The JSON inside follows Python's `json.dumps` layout (`", "` and `": "`, no other
//! whitespace) unless a schema asks otherwise through llguidance's `x-guidance` options.

use serde_json::{Value, json};

use super::ConstraintBuildError;

/// A function the model may be made to call: its name and its parameters' JSON schema.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSchema {
    /// `[A-Za-z0-9_-]{1,64}`, as OpenAI requires.
    pub name: String,
    /// The arguments' JSON schema; `None` = no parameters (`{}` is the only argument object).
    pub parameters: Option<Value>,
}

/// What the model's turn must be.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnGrammar {
    /// Calls to these functions and nothing else: `tool_choice: "required"` (one or more
    /// calls; exactly one with `parallel: false`) or a named function (one function, one call).
    Calls {
        /// The functions that may be called.
        functions: Vec<FunctionSchema>,
        /// Allow several calls in the turn.
        parallel: bool,
    },
    /// JSON content under a schema (`response_format`); `calls` may be made instead when the
    /// request offers tools with `tool_choice: "auto"`.
    Json {
        /// The content's schema (`{"type": "object"}` for `json_object`).
        schema: Value,
        /// Functions the model may call instead of answering (empty: none).
        calls: Vec<FunctionSchema>,
    },
}

/// Whether `name` is a function name we can put in a grammar and a prompt:
/// `^[A-Za-z0-9_-]{1,64}$` (OpenAI's rule).
pub fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The InternLM2 JSON layout as llguidance options, added to a schema that sets none.
fn with_layout(schema: &Value, what: &str) -> Result<Value, ConstraintBuildError> {
    let mut schema = match schema {
        Value::Object(_) => schema.clone(),
        Value::Bool(true) => json!({}),
        other => {
            return Err(ConstraintBuildError::Schema {
                reason: format!("{what}: a JSON schema must be an object, got {other}"),
            });
        }
    };
    if let Some(object) = schema.as_object_mut()
        && !object.contains_key("x-guidance")
    {
        object.insert(
            "x-guidance".into(),
            json!({"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": false}),
        );
    }
    Ok(schema)
}

/// The schema of a function without parameters: the empty object only.
fn no_parameters() -> Value {
    json!({"type": "object", "properties": {}, "additionalProperties": false})
}

/// A Lark string literal of `text` (which holds no control characters but `\n`).
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Lark rules for calls to `functions`: `call` is one complete call.
fn call_rules(functions: &[FunctionSchema]) -> Result<String, ConstraintBuildError> {
    if functions.is_empty() {
        return Err(ConstraintBuildError::Schema {
            reason: "no function to call".into(),
        });
    }
    let mut rules = String::new();
    let mut alternatives = Vec::new();
    for (i, function) in functions.iter().enumerate() {
        if !valid_function_name(&function.name) {
            return Err(ConstraintBuildError::Schema {
                reason: format!(
                    "function name {:?} is not [A-Za-z0-9_-]{{1,64}}",
                    function.name
                ),
            });
        }
        let schema = match &function.parameters {
            Some(schema) => with_layout(schema, &function.name)?,
            None => with_layout(&no_parameters(), &function.name)?,
        };
        let prefix = format!("\"{}\", \"parameters\": ", function.name);
        rules.push_str(&format!(
            "fn_{i}: {} fn_{i}_args\nfn_{i}_args: %json {}\n",
            literal(&prefix),
            serde_json::to_string(&schema).map_err(|e| ConstraintBuildError::Schema {
                reason: e.to_string(),
            })?
        ));
        alternatives.push(format!("fn_{i}"));
    }
    rules.push_str(&format!(
        "call: <|action_start|> <|plugin|> {} ({}) \"}}\" <|action_end|>\n",
        literal("\n{\"name\": "),
        alternatives.join(" | ")
    ));
    Ok(rules)
}

impl TurnGrammar {
    /// The grammar in llguidance's Lark dialect.
    pub fn to_lark(&self) -> Result<String, ConstraintBuildError> {
        Ok(match self {
            TurnGrammar::Calls {
                functions,
                parallel,
            } => {
                let repeat = if *parallel { "+" } else { "" };
                format!("start: call{repeat}\n{}", call_rules(functions)?)
            }
            TurnGrammar::Json { schema, calls } => {
                let schema = with_layout(schema, "response_format")?;
                let content = format!(
                    "content: %json {}\n",
                    serde_json::to_string(&schema).map_err(|e| ConstraintBuildError::Schema {
                        reason: e.to_string(),
                    })?
                );
                if calls.is_empty() {
                    format!("start: content\n{content}")
                } else {
                    format!("start: content | call+\n{content}{}", call_rules(calls)?)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_openai_rules() {
        assert!(valid_function_name("get_weather-2"));
        assert!(!valid_function_name(""));
        assert!(!valid_function_name("a b"));
        assert!(!valid_function_name("x\"y"));
        assert!(!valid_function_name(&"a".repeat(65)));
    }

    #[test]
    fn call_grammar_fixes_the_prefix_and_embeds_the_schema() {
        let grammar = TurnGrammar::Calls {
            functions: vec![FunctionSchema {
                name: "get_weather".into(),
                parameters: Some(json!({"type": "object"})),
            }],
            parallel: false,
        }
        .to_lark()
        .unwrap();
        assert!(grammar.starts_with("start: call\n"));
        assert!(grammar.contains(r#"fn_0: "\"get_weather\", \"parameters\": " fn_0_args"#));
        assert!(grammar.contains(r#""key_separator":": ""#));
        assert!(grammar.contains(
            r#"call: <|action_start|> <|plugin|> "\n{\"name\": " (fn_0) "}" <|action_end|>"#
        ));
        let bad = TurnGrammar::Calls {
            functions: vec![FunctionSchema {
                name: "x\"} evil".into(),
                parameters: None,
            }],
            parallel: true,
        };
        assert!(bad.to_lark().is_err());
        let not_schema = TurnGrammar::Json {
            schema: json!(3),
            calls: vec![],
        };
        assert!(not_schema.to_lark().is_err());
    }
}
