//! Request handling: typed errors for every bad request (context overflow with both numbers,
//! `usize::MAX` new tokens, bad sampling values, a full queue, a stopped engine), stop
//! strings and text deltas exactly as `generate` streams them, token constraints, logprobs,
//! cancellation by drop, a panic inside a step that fails only the running requests, and
//! shutdown.

mod support;

use std::time::Duration;

use internlm2::chat::ToolSet;
use internlm2::generate::{GenerationConfig, OverflowPolicy, generate};
use internlm2::sampling::SamplingConfig;
use internlm2_serve::engine::{
    ConstraintError, Engine, EngineConfig, EngineError, Event, FinishReason, Request,
    RequestHandle, StopKind, TokenConstraint,
};
use support::{Rng, collect};

fn greedy(n: usize) -> GenerationConfig {
    GenerationConfig::default()
        .with_max_new_tokens(n)
        .with_sampling(SamplingConfig::greedy())
}

fn small() -> EngineConfig {
    EngineConfig::new().with_kv_memory_bytes(1 << 20)
}

#[test]
fn bad_requests_are_typed_errors() {
    let model = support::model("tiny-internlm2");
    let engine = Engine::start(model, None, small()).unwrap();
    assert_eq!(engine.context_limit(), 128);
    assert_eq!(engine.vocab_size(), 512);
    let submit = |prompt: Vec<u32>, config: GenerationConfig| {
        engine.submit(Request::new(prompt, config)).map(|_| ())
    };

    let overflow = submit(vec![5; 100], greedy(40)).unwrap_err();
    assert_eq!(
        overflow,
        EngineError::ContextOverflow {
            prompt_len: 100,
            max_new_tokens: 40,
            limit: 128
        }
    );
    let message = overflow.to_string();
    assert!(message.contains("100") && message.contains("40") && message.contains("128"));
    // usize::MAX new tokens: an overflow, never a wrap...
    assert!(matches!(
        submit(vec![5; 10], greedy(usize::MAX)),
        Err(EngineError::ContextOverflow {
            max_new_tokens: usize::MAX,
            ..
        })
    ));
    // ...or, when asked, clamped to the context.
    let clamped = greedy(usize::MAX).with_overflow(OverflowPolicy::ClampNewTokens);
    let got = collect(engine.submit(Request::new(vec![5; 120], clamped)).unwrap());
    assert_eq!(got.tokens.len(), 8);
    assert_eq!(got.reason(), &FinishReason::Length);
    // A request's own context limit.
    assert!(matches!(
        submit(vec![5; 10], greedy(10).with_context_limit(Some(15))),
        Err(EngineError::ContextOverflow { limit: 15, .. })
    ));

    let param = |r: Result<(), EngineError>| match r {
        Err(EngineError::InvalidRequest { param, .. }) => param,
        other => panic!("expected InvalidRequest, got {other:?}"),
    };
    let sampled = |s: SamplingConfig| greedy(4).with_sampling(s);
    assert_eq!(
        param(submit(
            vec![5],
            sampled(SamplingConfig::default().with_temperature(-1.0))
        )),
        "temperature"
    );
    assert_eq!(
        param(submit(
            vec![5],
            sampled(SamplingConfig::default().with_top_p(0.0))
        )),
        "top_p"
    );
    assert_eq!(
        param(submit(
            vec![5],
            sampled(SamplingConfig::default().with_min_p(2.0))
        )),
        "min_p"
    );
    assert_eq!(
        param(submit(
            vec![5],
            sampled(SamplingConfig::default().with_repetition_penalty(f32::NAN))
        )),
        "repetition_penalty"
    );
    assert_eq!(param(submit(vec![], greedy(4))), "prompt");
    assert_eq!(param(submit(vec![5, 512], greedy(4))), "prompt");
    assert_eq!(
        param(submit(
            vec![5],
            greedy(4).with_stop_strings(vec!["x".into()])
        )),
        "stop_strings"
    );
    let too_many = engine.submit(Request::new(vec![5], greedy(4)).with_logprobs(21));
    assert!(matches!(
        too_many,
        Err(EngineError::InvalidRequest {
            param: "top_logprobs",
            ..
        })
    ));
    let tools = engine.submit(Request::new(vec![5], greedy(4)).with_tool_parsing(ToolSet::any()));
    assert!(matches!(
        tools,
        Err(EngineError::InvalidRequest {
            param: "parse_tools",
            ..
        })
    ));

    engine.shutdown();
    assert_eq!(submit(vec![5], greedy(4)), Err(EngineError::ShutDown));
}

#[test]
fn bad_engine_configs_are_typed_errors() {
    let model = support::model("tiny-internlm2");
    for (config, name) in [
        (small().with_block_size(0), "block_size"),
        (small().with_max_running(0), "max_running"),
        (small().with_prefill_chunk(0), "prefill_chunk"),
        (small().with_kv_memory_bytes(100), "kv_memory_bytes"),
    ] {
        match Engine::start(model.clone(), None, config) {
            Err(EngineError::InvalidConfig { param, .. }) => assert_eq!(param, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    // A pool too small for one request alone is refused at submit.
    let per_block = 2 * 2 * 2 * 16 * 16 * 4; // layers, K/V, kv heads, tokens, head_dim, f32
    let engine = Engine::start(model, None, small().with_kv_memory_bytes(2 * per_block)).unwrap();
    assert!(matches!(
        engine.submit(Request::new(vec![5; 20], greedy(20))),
        Err(EngineError::ExceedsKvPool {
            pool_tokens: 32,
            needed_tokens: 39,
            ..
        })
    ));
    // Clamped to the pool instead when asked: 33 slots in all, the last token never stored.
    assert_eq!(engine.max_sequence_tokens(), 33);
    let clamp = greedy(20).with_overflow(OverflowPolicy::ClampNewTokens);
    let got = collect(engine.submit(Request::new(vec![5; 20], clamp)).unwrap());
    assert_eq!(got.tokens.len(), 13);
}

#[test]
fn a_full_queue_refuses_and_recovers() {
    let model = support::model("tiny-internlm2");
    let engine =
        Engine::start(model, None, small().with_max_waiting(2).with_max_running(1)).unwrap();
    // The first request holds the worker, so the next ones wait.
    let gate = Gate::default();
    let request = Request::new(vec![5; 8], greedy(30)).with_constraint(Box::new(gate.clone()));
    let mut handles = vec![engine.submit(request).unwrap()];
    gate.wait_entered();
    for _ in 0..2 {
        handles.push(engine.submit(Request::new(vec![5; 8], greedy(30))).unwrap());
    }
    match engine.submit(Request::new(vec![5; 8], greedy(30))) {
        Err(EngineError::QueueFull { waiting }) => assert_eq!(waiting, 2),
        other => panic!("{other:?}"),
    }
    gate.open();
    for h in handles {
        assert_eq!(collect(h).reason(), &FinishReason::Length);
    }
    // The queue drained: submits work again.
    assert!(engine.submit(Request::new(vec![5; 8], greedy(2))).is_ok());
}

#[test]
fn text_and_stop_strings_stream_as_generate_streams_them() {
    let model = support::model("tiny-internlm2");
    let tokenizer = support::tokenizer();
    let engine = Engine::start(model.clone(), Some(tokenizer.clone()), small()).unwrap();
    let prompt = vec![1, 300, 301, 302, 290];
    // A stop string the greedy output really contains: two characters from its middle.
    let plain = generate(
        &model,
        Some(&tokenizer),
        vec![prompt.clone()],
        &greedy(24),
        |_| true,
    )
    .unwrap();
    let chars: Vec<char> = plain[0].text.clone().unwrap().chars().collect();
    assert!(chars.len() >= 4, "{chars:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    for config in [
        greedy(24),
        greedy(24).with_stop_strings(vec![stop.clone(), "never appears".into()]),
        greedy(24).with_stop_token_ids(vec![plain[0].tokens[10]]),
    ] {
        let expected = generate(
            &model,
            Some(&tokenizer),
            vec![prompt.clone()],
            &config,
            |_| true,
        )
        .unwrap()
        .remove(0);
        let got = collect(engine.submit(Request::new(prompt.clone(), config)).unwrap());
        assert_eq!(got.tokens, expected.tokens);
        assert_eq!(Some(got.text.clone()), expected.text);
        let reason = match &expected.finish_reason {
            internlm2::generate::FinishReason::StopString(s) => {
                FinishReason::Stop(StopKind::String(s.clone()))
            }
            internlm2::generate::FinishReason::StopToken(t) => {
                FinishReason::Stop(StopKind::Token(*t))
            }
            internlm2::generate::FinishReason::Length => FinishReason::Length,
            other => panic!("{other:?}"),
        };
        assert_eq!(got.reason(), &reason);
    }
}

/// Allows only `allowed`, and is complete after `length` tokens.
struct OnlyThese {
    allowed: Vec<u32>,
    length: usize,
    seen: usize,
}

impl TokenConstraint for OnlyThese {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        for (id, l) in logits.iter_mut().enumerate() {
            if !self.allowed.contains(&(id as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        if !self.allowed.contains(&token) {
            return Err(ConstraintError(format!("{token} was not allowed")));
        }
        self.seen += 1;
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.seen >= self.length
    }
}

/// Panics when asked to mask (a bug in a constraint, or anywhere in a step).
struct Explodes;

impl TokenConstraint for Explodes {
    fn mask(&mut self, _: &mut [f32]) -> Result<(), ConstraintError> {
        panic!("constraint bug");
    }
    fn commit(&mut self, _: u32) -> Result<(), ConstraintError> {
        Ok(())
    }
    fn is_complete(&self) -> bool {
        false
    }
}

#[test]
fn constraints_restrict_and_end_requests() {
    let model = support::model("tiny-internlm2");
    let engine = Engine::start(model, None, small()).unwrap();
    let constraint = OnlyThese {
        allowed: vec![7, 70, 300],
        length: 5,
        seen: 0,
    };
    let request = Request::new(
        vec![1, 2, 3],
        greedy(50).with_sampling(SamplingConfig::default().with_seed(4)),
    )
    .with_constraint(Box::new(constraint))
    .with_logprobs(2);
    let got = collect(engine.submit(request).unwrap());
    assert_eq!(got.tokens.len(), 5);
    assert!(
        got.tokens.iter().all(|t| [7, 70, 300].contains(t)),
        "{:?}",
        got.tokens
    );
    assert_eq!(got.reason(), &FinishReason::Stop(StopKind::Constraint));
    // Logprobs are the model's, before the constraint.
    assert!(
        got.logprobs
            .iter()
            .all(|l| l.logprob < 0.0 && l.top.len() == 2)
    );
}

#[test]
fn a_panicking_step_fails_its_requests_and_the_engine_keeps_serving() {
    let model = support::model("tiny-internlm2");
    let engine = Engine::start(model, None, small()).unwrap();
    let bad = engine
        .submit(Request::new(vec![1, 2, 3], greedy(5)).with_constraint(Box::new(Explodes)))
        .unwrap();
    let got = collect(bad);
    match got.reason() {
        FinishReason::Error(message) => assert!(message.contains("constraint bug"), "{message}"),
        other => panic!("{other:?}"),
    }
    let good = collect(
        engine
            .submit(Request::new(vec![1, 2, 3], greedy(5)))
            .unwrap(),
    );
    assert_eq!(good.reason(), &FinishReason::Length);
    assert_eq!(good.tokens.len(), 5);
    let metrics = engine.metrics();
    assert_eq!(metrics.requests_finished.error, 1);
    assert_eq!(metrics.kv_blocks_used, 0);
}

/// Holds the worker inside its next sampling step until opened, so that a test can act while
/// a request is certainly running (its blocks held).
#[derive(Clone, Default)]
struct Gate(std::sync::Arc<(std::sync::Mutex<(bool, bool)>, std::sync::Condvar)>);

impl Gate {
    /// Waits until the worker is held at the gate.
    fn wait_entered(&self) {
        let (lock, cv) = &*self.0;
        let mut state = lock.lock().unwrap();
        while !state.0 {
            state = cv.wait(state).unwrap();
        }
    }

    fn open(&self) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
}

impl TokenConstraint for Gate {
    fn mask(&mut self, _: &mut [f32]) -> Result<(), ConstraintError> {
        let (lock, cv) = &*self.0;
        let mut state = lock.lock().unwrap();
        state.0 = true;
        cv.notify_all();
        while !state.1 {
            state = cv.wait(state).unwrap();
        }
        Ok(())
    }
    fn commit(&mut self, _: u32) -> Result<(), ConstraintError> {
        Ok(())
    }
    fn is_complete(&self) -> bool {
        false
    }
}

/// Submits a long request held at the gate, runs `walk_away` on its handle while the worker
/// is inside its first sampling step, opens the gate and waits for the engine to settle.
fn cancel_midway(walk_away: impl FnOnce(RequestHandle) -> Option<RequestHandle>) {
    let model = support::model("tiny-internlm2");
    let engine = Engine::start(model, None, small()).unwrap();
    let gate = Gate::default();
    let request = Request::new(vec![3; 40], greedy(80)).with_constraint(Box::new(gate.clone()));
    let handle = engine.submit(request).unwrap();
    gate.wait_entered();
    let kept = walk_away(handle);
    gate.open();
    if let Some(handle) = kept {
        let got = collect(handle);
        assert_eq!(got.reason(), &FinishReason::Cancelled);
        assert!(got.tokens.len() < 80);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = engine.metrics();
        if m.requests_finished.cancelled == 1 && m.kv_blocks_used == 0 && m.running == 0 {
            assert!(m.generation_tokens_total < 80, "{m:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dropping_a_handle_cancels_and_frees_its_blocks() {
    cancel_midway(|handle| {
        drop(handle);
        None
    });
}

#[test]
fn a_cancel_token_from_another_thread_cancels() {
    cancel_midway(|handle| {
        let token = handle.cancel_token();
        std::thread::spawn(move || token.cancel()).join().unwrap();
        Some(handle)
    });
}

#[test]
fn shutdown_finishes_running_requests_and_cancels_waiting_ones() {
    let model = support::model("tiny-internlm2");
    let engine = Engine::start(model, None, small().with_max_running(1)).unwrap();
    let mut rng = Rng(1);
    // The first request runs (held at the gate); three more wait behind it.
    let gate = Gate::default();
    let first =
        Request::new(rng.prompt(10, 512), greedy(40)).with_constraint(Box::new(gate.clone()));
    let first = engine.submit(first).unwrap();
    gate.wait_entered();
    let queued: Vec<_> = (0..3)
        .map(|_| {
            engine
                .submit(Request::new(rng.prompt(10, 512), greedy(40)))
                .unwrap()
        })
        .collect();
    // Shut down (which waits for the worker) while the worker is still held; open the gate
    // once the shutdown command is surely queued behind the three submits.
    let stopper = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.shutdown())
    };
    std::thread::sleep(Duration::from_millis(200));
    gate.open();
    stopper.join().unwrap();
    let got = collect(first);
    assert_eq!(got.reason(), &FinishReason::Length);
    assert_eq!(got.tokens.len(), 40);
    for h in queued {
        assert_eq!(collect(h).reason(), &FinishReason::Cancelled);
    }
    assert!(matches!(
        engine.submit(Request::new(vec![5], greedy(1))),
        Err(EngineError::ShutDown)
    ));
}

#[test]
fn async_callers_read_the_same_stream() {
    let model = support::model("tiny-internlm2");
    let engine = Engine::start(model, None, small()).unwrap();
    let blocking = collect(
        engine
            .submit(Request::new(vec![1, 9, 8], greedy(6)))
            .unwrap(),
    );
    let mut handle = engine
        .submit(Request::new(vec![1, 9, 8], greedy(6)))
        .unwrap();
    // A minimal executor: the handle's future only waits on a channel.
    let tokens = futures_lite_block_on(async move {
        let mut tokens = Vec::new();
        while let Some(event) = handle.next().await {
            if let Event::Token { token, .. } = event {
                tokens.push(token);
            }
        }
        tokens
    });
    assert_eq!(tokens, blocking.tokens);
}

/// Polls a future to completion on this thread, parking between wake-ups.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(value) => return value,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Allows exactly one token per step: the planned ones, in order.
struct Forced {
    plan: Vec<u32>,
    at: usize,
}

impl TokenConstraint for Forced {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let next = self.plan[self.at] as usize;
        for (id, l) in logits.iter_mut().enumerate() {
            if id != next {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }
    fn commit(&mut self, _: u32) -> Result<(), ConstraintError> {
        self.at += 1;
        Ok(())
    }
    fn is_complete(&self) -> bool {
        self.at >= self.plan.len()
    }
}

#[test]
fn tool_calls_come_as_events_and_end_the_turn() {
    // A random model with the real vocabulary, so that the chat tokens exist; the output is
    // forced token by token.
    let tokenizer = support::tokenizer();
    let config = internlm2::InternLM2Config::new(92_544, 64, 128, 2, 4, 2);
    let model =
        internlm2::InternLM2::<internlm2::backends::Cpu>::init(&config, &Default::default());
    let engine = Engine::start(model, Some(tokenizer.clone()), small()).unwrap();
    let im_end = tokenizer.token_to_id("<|im_end|>").unwrap();
    let output = "Let me check.<|action_start|><|plugin|>\n{\"name\": \"weather\", \
                  \"parameters\": {\"city\": \"Paris\"}}<|action_end|>";
    let mut plan = tokenizer.encode(output, false).unwrap();
    plan.push(im_end);
    let run = |tools: ToolSet| {
        let request = Request::new(vec![1, 333], greedy(100).with_stop_token_ids(vec![im_end]))
            .with_constraint(Box::new(Forced {
                plan: plan.clone(),
                at: 0,
            }))
            .with_tool_parsing(tools);
        let mut handle = engine.submit(request).unwrap();
        let mut calls = Vec::new();
        let mut got = support::Collected::default();
        while let Some(event) = handle.next_blocking() {
            if let Event::ToolCall(call) = &event {
                calls.push(call.clone());
            }
            got.push(event);
        }
        (got, calls)
    };
    let (got, calls) = run(ToolSet::functions(["weather"]));
    assert_eq!(got.text, "Let me check.");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(got.reason(), &FinishReason::ToolCalls);
    // A call to a tool the request did not declare stays text.
    let (got, calls) = run(ToolSet::functions(["search"]));
    assert!(calls.is_empty());
    assert!(got.text.contains("\"weather\""), "{}", got.text);
    assert_eq!(got.reason(), &FinishReason::Stop(StopKind::Token(im_end)));
}
