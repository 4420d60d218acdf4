//! Shared helpers of the evaluation tests: the fixtures and a scripted model.
#![allow(dead_code)]

use std::path::PathBuf;

use internlm2::Tokenizer;
use internlm2_eval::{Completion, Generator, Result};

/// `$INTERNLM2_FIXTURES`, or `../shared/fixtures` beside the workspace.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("INTERNLM2_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    assert!(
        dir.is_dir(),
        "reference fixtures not found at {} (set INTERNLM2_FIXTURES)",
        dir.display()
    );
    dir
}

/// InternLM2's SentencePiece tokenizer (with the chat tokens).
pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(fixtures().join("tokenizer/tokenizer_internlm2.model")).unwrap()
}

/// A model whose answer to a prompt is a function of the prompt's text.
pub struct Scripted<F> {
    pub tokenizer: Tokenizer,
    pub answer: F,
    pub batch: usize,
    pub limit: usize,
    /// Every prompt text it was asked, in order.
    pub asked: Vec<String>,
    /// Batch sizes of the calls.
    pub calls: Vec<usize>,
}

impl<F: FnMut(&str, usize) -> String> Scripted<F> {
    pub fn new(answer: F) -> Self {
        Self {
            tokenizer: tokenizer(),
            answer,
            batch: 3,
            limit: 1 << 20,
            asked: Vec::new(),
            calls: Vec::new(),
        }
    }
}

impl<F: FnMut(&str, usize) -> String> Generator for Scripted<F> {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn context_limit(&self) -> usize {
        self.limit
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    /// `answer(prompt text, prompt tokens)`.
    fn complete(&mut self, prompts: Vec<Vec<u32>>, _max_new: usize) -> Result<Vec<Completion>> {
        self.calls.push(prompts.len());
        let mut out = Vec::new();
        for ids in prompts {
            let text = self.tokenizer.decode(&ids).unwrap();
            let answer = (self.answer)(&text, ids.len());
            self.asked.push(text);
            out.push(Completion {
                tokens: 1,
                text: answer,
            });
        }
        Ok(out)
    }
}
