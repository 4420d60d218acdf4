//! The agent on the serving engine (feature `engine`): the same conversation on a tiny random
//! InternLM2 through `internlm2::generate` and through the engine gives the same transcript
//! (greedy), with the interpreter's result in between.
#![cfg(feature = "engine")]

mod common;

use std::sync::Arc;

use internlm2::backends::Cpu;
use internlm2::generate::GenerationConfig;
use internlm2::sampling::SamplingConfig;
use internlm2::{InternLM2, InternLM2Config};
use internlm2_agent::{
    Agent, AgentConfig, Completion, EngineGenerator, ModelGenerator, StopReason, TextGenerator,
};
use internlm2_serve::engine::{Engine, EngineConfig};

struct ForcedFirstTurn<G> {
    forced: Option<String>,
    inner: G,
}

impl<G: TextGenerator> TextGenerator for ForcedFirstTurn<G> {
    type Error = G::Error;

    fn complete(
        &mut self,
        prompt: &str,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<Completion, G::Error> {
        match self.forced.take() {
            Some(text) => Ok(Completion {
                text,
                stop: StopReason::ActionEnd,
                tokens: 0,
            }),
            None => self.inner.complete(prompt, on_delta),
        }
    }
}

fn run<G: TextGenerator>(generator: G) -> String {
    let forced = "<|action_start|><|interpreter|>\n```python\nprint(6 * 7)\n```".to_string();
    let mut agent = Agent::new(ForcedFirstTurn {
        forced: Some(forced),
        inner: generator,
    })
    .with_config(AgentConfig::default().with_max_turns(2))
    .with_interpreter(common::interpreter(10.0));
    let outcome = agent.run("Multiply six by seven.", |_| {}).unwrap();
    assert_eq!((outcome.turns, outcome.tool_calls), (2, 1));
    agent.transcript_text().unwrap()
}

#[test]
fn the_engine_and_generate_give_the_same_agent_transcript() {
    let tokenizer = common::tokenizer();
    let config = InternLM2Config::new(tokenizer.vocab_size(), 64, 128, 2, 4, 2);
    let model = InternLM2::<Cpu>::init(&config, &Default::default());
    let generation = GenerationConfig::default()
        .with_max_new_tokens(8)
        .with_sampling(SamplingConfig::greedy());

    let direct = run(ModelGenerator::new(&model, &tokenizer, generation.clone()).unwrap());
    let engine = Engine::start(
        model.clone(),
        Some(Arc::new(tokenizer.clone())),
        EngineConfig::new().with_kv_memory_bytes(64 << 20),
    )
    .unwrap();
    let served = run(EngineGenerator::new(engine, generation).unwrap());
    assert!(
        direct.contains("<|im_start|>environment name=<|interpreter|>\n42<|im_end|>\n"),
        "{direct}"
    );
    assert_eq!(served, direct);
}
