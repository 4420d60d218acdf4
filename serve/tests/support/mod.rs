//! Shared helpers of the engine tests: the reference fixtures, and reading requests to the end.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::DType;
use internlm2::backends::Cpu;
use internlm2::{InternLM2, Tokenizer};
use internlm2_serve::engine::{Event, FinishReason, RequestHandle, TokenLogprob, Usage};

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

/// The two tiny model fixtures.
pub const MODELS: [&str; 2] = ["tiny-internlm2", "tiny-internlm2-sharded"];

/// A fixture model in f32.
pub fn model(name: &str) -> InternLM2<Cpu> {
    InternLM2::load(fixtures().join(name), DType::F32, &Default::default()).unwrap()
}

/// The real InternLM2 tokenizer of the fixtures.
pub fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_file(fixtures().join("tokenizer/tokenizer_internlm2.model")).unwrap())
}

/// Everything a request streamed.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub tokens: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<(FinishReason, Usage)>,
}

impl Collected {
    pub fn push(&mut self, event: Event) {
        match event {
            Event::Token {
                token,
                delta,
                logprob,
            } => {
                assert!(self.finish.is_none(), "a token after the finish event");
                self.tokens.push(token);
                self.text.push_str(&delta);
                self.logprobs.extend(logprob);
            }
            Event::ToolCall(_) => {}
            Event::Finished { reason, usage } => {
                assert!(self.finish.is_none(), "two finish events");
                self.finish = Some((reason, usage));
            }
        }
    }

    pub fn reason(&self) -> &FinishReason {
        &self.finish.as_ref().expect("finished").0
    }

    pub fn usage(&self) -> Usage {
        self.finish.as_ref().expect("finished").1
    }
}

/// Reads a request to its end.
pub fn collect(mut handle: RequestHandle) -> Collected {
    let mut out = Collected::default();
    while let Some(event) = handle.next_blocking() {
        out.push(event);
    }
    assert!(
        out.finish.is_some(),
        "the stream ended without a finish event"
    );
    out
}

/// Deterministic pseudo-random numbers (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }

    /// `len` ids in `3..vocab` (no BOS/EOS).
    pub fn prompt(&mut self, len: usize, vocab: usize) -> Vec<u32> {
        (0..len).map(|_| self.range(3, vocab) as u32).collect()
    }
}
