//! The loop on a real (tiny, random) InternLM2 with the released tokenizer: the first turn's
//! tool call is forced (a random model never writes one), the interpreter runs it in the
//! sandbox, and the model then generates its next turn from the prompt holding the result,
//! which shows that rendering, tokenisation, generation, parsing and execution connect.

mod common;

use internlm2::backends::Cpu;
use internlm2::generate::GenerationConfig;
use internlm2::sampling::SamplingConfig;
use internlm2::{InternLM2, InternLM2Config};
use internlm2_agent::{
    Agent, AgentConfig, AgentEvent, Completion, Finish, INTERPRETER_PROMPT, ModelGenerator,
    StopReason, TextGenerator,
};

/// Forces the text of the first turn, then lets the model generate.
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
            Some(text) => {
                on_delta(&text);
                Ok(Completion {
                    text,
                    stop: StopReason::ActionEnd,
                    tokens: 0,
                })
            }
            None => self.inner.complete(prompt, on_delta),
        }
    }
}

#[test]
fn a_random_model_continues_after_a_forced_interpreter_call() {
    let tokenizer = common::tokenizer();
    let config = InternLM2Config::new(tokenizer.vocab_size(), 64, 128, 2, 4, 2);
    let device = Default::default();
    let model = InternLM2::<Cpu>::init(&config, &device);
    let generation = GenerationConfig::default()
        .with_max_new_tokens(6)
        .with_sampling(SamplingConfig::greedy());
    let generator = ModelGenerator::new(&model, &tokenizer, generation).unwrap();
    let forced =
        "<|action_start|><|interpreter|>\n```python\nprint(sum(range(10)))\n```".to_string();
    let mut agent = Agent::new(ForcedFirstTurn {
        forced: Some(forced),
        inner: generator,
    })
    .with_config(AgentConfig::default().with_max_turns(2))
    .with_interpreter(common::interpreter(10.0));

    let mut streamed = String::new();
    let outcome = agent
        .run("Add the numbers below ten.", |e| {
            if let AgentEvent::TextDelta(d) = e {
                streamed.push_str(d);
            }
        })
        .unwrap();
    assert_eq!(outcome.tool_calls, 1);
    assert_eq!(outcome.turns, 2);

    // The model saw exactly this text, as these token ids.
    let seen = format!(
        "<|im_start|>system name=<|interpreter|>\n{INTERPRETER_PROMPT}<|im_end|>\n\
         <|im_start|>user\nAdd the numbers below ten.<|im_end|>\n\
         <|im_start|>assistant\n<|action_start|><|interpreter|>\n```python\nprint(sum(range(10)))\n```<|action_end|><|im_end|>\n\
         <|im_start|>environment name=<|interpreter|>\n45<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let generator = &agent.generator().inner;
    let prompt_ids = generator.last_prompt_ids();
    assert_eq!(prompt_ids, tokenizer.encode(&seen, true).unwrap());
    let tail = &prompt_ids[prompt_ids.len() - 12..];
    assert!(
        tail.contains(&92539) && tail.contains(&92543),
        "environment turn ids: {tail:?}"
    );

    // Its generated tokens are the last assistant turn, decoded.
    let generated = generator.last_generated_ids();
    assert!(!generated.is_empty() && generated.len() <= 6);
    let stops = [2, 92542, 92540];
    let text_ids: Vec<u32> = generated
        .iter()
        .copied()
        .filter(|id| !stops.contains(id))
        .collect();
    let last = agent.messages().last().unwrap();
    let decoded = tokenizer.decode(&text_ids).unwrap();
    match outcome.finish {
        Finish::Length => assert_eq!(last.content, decoded),
        // A random model may stop or call by chance; then the turn is parsed like any other.
        other => eprintln!("the random model ended its turn with {other:?}: {decoded:?}"),
    }
    assert!(streamed.contains(decoded.split("<|action_start|>").next().unwrap()));
}
