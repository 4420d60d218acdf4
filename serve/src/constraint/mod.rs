//! Constrained decoding: [`TokenConstraint`]s that make a request's output follow a grammar,
//! built with [llguidance](https://github.com/guidance-ai/llguidance) (the library behind
//! llama.cpp's and vLLM's structured outputs) over a token trie of our own vocabulary.
//!
//! - `tool_choice: "required"` / a named function: the call prefix
//!   `<|action_start|><|plugin|>\n{"name": "<fn>", "parameters": ` is forced and the arguments
//!   are generated under the function's JSON schema, so they always parse and validate
//!   ([`TurnGrammar::Calls`]).
//! - `response_format: json_object / json_schema`: the content is JSON under the schema
//!   ([`TurnGrammar::Json`]).
//! - `tool_choice: "none"`: `<|action_start|>` is never sampled ([`BanTokens`]).
//!
//! Build one [`ConstraintFactory`] per tokenizer (it indexes the 92,544 pieces once, about a
//! second) and one constraint per request:
//!
//! ```no_run
//! use std::sync::Arc;
//! use internlm2::Tokenizer;
//! use internlm2_serve::constraint::{ConstraintFactory, FunctionSchema, TurnGrammar};
//! let tokenizer = Arc::new(Tokenizer::from_file("tokenizer.model")?);
//! let factory = ConstraintFactory::new(tokenizer)?;
//! let constraint = factory.build(&TurnGrammar::Calls {
//!     functions: vec![FunctionSchema {
//!         name: "get_weather".into(),
//!         parameters: Some(serde_json::json!({
//!             "type": "object",
//!             "properties": {"city": {"type": "string"}},
//!             "required": ["city"]
//!         })),
//!     }],
//!     parallel: false,
//! })?;
//! // Request::new(prompt, config).with_constraint(Box::new(constraint))
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod grammar;
mod vocab;

use std::sync::Arc;

use internlm2::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};

use crate::engine::{ConstraintError, TokenConstraint};

pub use grammar::{FunctionSchema, TurnGrammar, valid_function_name};

/// Why a constraint cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintBuildError {
    /// The vocabulary lacks InternLM2's chat tokens.
    #[error(
        "constrained decoding needs the chat tokens (<|im_end|>, <|action_start|>, ...) in the vocabulary"
    )]
    NoChatTokens,
    /// The tokenizer cannot say which bytes each id stands for (a `tokenizer.json` pipeline).
    #[error(
        "constrained decoding needs a SentencePiece tokenizer.model (the bytes of every id); this tokenizer is a tokenizer.json pipeline"
    )]
    NoByteTable,
    /// Reading the vocabulary failed.
    #[error("vocabulary: {reason}")]
    Vocabulary {
        /// What went wrong.
        reason: String,
    },
    /// A schema or grammar that llguidance cannot compile (or that is not a schema).
    #[error("{reason}")]
    Schema {
        /// What llguidance (or the schema check) reported.
        reason: String,
    },
}

/// Compiles grammars against one tokenizer; cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct ConstraintFactory {
    factory: Arc<ParserFactory>,
}

impl std::fmt::Debug for ConstraintFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintFactory").finish_non_exhaustive()
    }
}

impl ConstraintFactory {
    /// Indexes the tokenizer's vocabulary (a SentencePiece `tokenizer.model` with the chat
    /// tokens).
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Self, ConstraintBuildError> {
        let env = vocab::Vocabulary::env(tokenizer)?;
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| ConstraintBuildError::Vocabulary {
                reason: e.to_string(),
            })?;
        // Library code never prints: grammar warnings go to the error value, not stderr.
        factory.set_stderr_log_level(0);
        Ok(Self {
            factory: Arc::new(factory),
        })
    }

    /// A constraint for one request's turn.
    pub fn build(&self, turn: &TurnGrammar) -> Result<GrammarConstraint, ConstraintBuildError> {
        self.lark(&turn.to_lark()?)
    }

    /// A constraint from a grammar in llguidance's Lark dialect (special tokens as
    /// `<|im_end|>`, JSON schemas as `%json {...}`).
    pub fn lark(&self, grammar: &str) -> Result<GrammarConstraint, ConstraintBuildError> {
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_lark(grammar.to_string()))
            .map_err(|e| ConstraintBuildError::Schema {
                reason: e.to_string(),
            })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(ConstraintBuildError::Schema { reason: error });
        }
        Ok(GrammarConstraint { matcher })
    }
}

/// A request's output under a grammar (see [`ConstraintFactory`]).
pub struct GrammarConstraint {
    matcher: Matcher,
}

impl std::fmt::Debug for GrammarConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarConstraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl TokenConstraint for GrammarConstraint {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError(e.to_string()))?;
        let known = allowed.len();
        let mut any = false;
        for (id, logit) in logits.iter_mut().enumerate() {
            if id < known && allowed.is_allowed(id as u32) {
                any |= *logit > f32::NEG_INFINITY;
            } else {
                *logit = f32::NEG_INFINITY;
            }
        }
        if any {
            Ok(())
        } else {
            Err(ConstraintError(
                "the grammar allows no token the model can produce".into(),
            ))
        }
    }

    fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError(e.to_string()))
    }

    fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Forbids a fixed set of tokens (e.g. `<|action_start|>` for `tool_choice: "none"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanTokens {
    banned: Vec<u32>,
}

impl BanTokens {
    /// Never samples any of `banned`.
    pub fn new(banned: Vec<u32>) -> Self {
        Self { banned }
    }
}

impl TokenConstraint for BanTokens {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        for &id in &self.banned {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    fn commit(&mut self, _token: u32) -> Result<(), ConstraintError> {
        Ok(())
    }

    fn is_complete(&self) -> bool {
        false
    }
}
