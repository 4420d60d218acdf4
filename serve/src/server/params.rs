//! Request parameters -> engine settings: OpenAI's sampling fields checked against their
//! documented ranges (a 400 naming the field otherwise), fields we cannot honour refused, and
//! the result as a [`GenerationConfig`] per choice.

use internlm2::generate::{GenerationConfig, OverflowPolicy};
use internlm2::sampling::SamplingConfig;

use super::error::ApiError;
use super::protocol::SamplingParams;

/// Most choices per prompt (`n`).
pub const MAX_CHOICES: u64 = 16;
/// Most stop strings per request.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// What the engine needs for each choice of one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationPlan {
    /// Settings of choice 0; choice `i` differs only in its seed (`seed + i`).
    pub config: GenerationConfig,
    /// Choices.
    pub n: usize,
    /// Answer as SSE.
    pub stream: bool,
    /// A final usage chunk in streams.
    pub include_usage: bool,
}

impl GenerationPlan {
    /// The settings of choice `index`.
    pub fn choice(&self, index: usize) -> GenerationConfig {
        let mut config = self.config.clone();
        config.sampling.seed = config.sampling.seed.wrapping_add(index as u64);
        config
    }
}

fn check_range(name: &str, value: f32, ok: bool, range: &str) -> Result<(), ApiError> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            name,
            format!("`{name}` must be in {range}, got {value}"),
        ))
    }
}

/// Checks the shared parameters and builds the plan.
///
/// - `max_tokens`: the explicit limit, if any (a prompt plus it beyond the context is a 400);
///   without one the answer may run to the end of the context.
/// - `defaults`: the sampling used for fields the request leaves out.
/// - `stop_ids`: the chat or completion stop tokens.
pub fn plan(
    params: &SamplingParams,
    max_tokens: Option<u64>,
    defaults: &SamplingConfig,
    context_limit: usize,
    stop_ids: Vec<u32>,
) -> Result<GenerationPlan, ApiError> {
    let mut sampling = defaults.clone();
    if let Some(t) = params.temperature {
        check_range("temperature", t, (0.0..=2.0).contains(&t), "[0, 2]")?;
        sampling.temperature = t;
    }
    if let Some(p) = params.top_p {
        check_range("top_p", p, p > 0.0 && p <= 1.0, "(0, 1]")?;
        sampling.top_p = p;
    }
    if let Some(k) = params.top_k {
        if k < -1 {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be >= 0 (0 or -1 = off), got {k}"),
            ));
        }
        sampling.top_k = usize::try_from(k.max(0)).unwrap_or(usize::MAX);
    }
    if let Some(p) = params.min_p {
        check_range("min_p", p, (0.0..=1.0).contains(&p), "[0, 1]")?;
        sampling.min_p = p;
    }
    if let Some(r) = params.repetition_penalty {
        check_range("repetition_penalty", r, r > 0.0, "(0, inf)")?;
        sampling.repetition_penalty = r;
    }
    for (name, value) in [
        ("presence_penalty", params.presence_penalty),
        ("frequency_penalty", params.frequency_penalty),
    ] {
        match value {
            Some(v) if v != 0.0 => {
                return Err(ApiError::unsupported(
                    name,
                    format!("`{name}` is not supported (only 0); use `repetition_penalty`"),
                ));
            }
            _ => {}
        }
    }
    if params.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::unsupported(
            "logit_bias",
            "`logit_bias` is not supported (only an empty map)",
        ));
    }
    sampling.seed = match params.seed {
        // Any integer: its two's-complement bits.
        Some(seed) => seed as u64,
        None => rand::random(),
    };
    let n = params.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be in [1, {MAX_CHOICES}], got {n}"),
        ));
    }
    let stop = params
        .stop
        .clone()
        .map(|s| s.into_vec())
        .unwrap_or_default();
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "at most {MAX_STOP_STRINGS} stop strings, got {}",
                stop.len()
            ),
        ));
    }
    if let Some(bad) = stop
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop strings must be 1 to {MAX_STOP_BYTES} bytes, got one of {} bytes",
                bad.len()
            ),
        ));
    }
    let (max_new_tokens, overflow) = match max_tokens {
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "`max_tokens` must be at least 1",
            ));
        }
        Some(m) => (
            usize::try_from(m).unwrap_or(usize::MAX),
            OverflowPolicy::Error,
        ),
        None => (context_limit, OverflowPolicy::ClampNewTokens),
    };
    let config = GenerationConfig::default()
        .with_max_new_tokens(max_new_tokens)
        .with_overflow(overflow)
        .with_sampling(sampling)
        .with_stop_token_ids(stop_ids)
        .with_stop_strings(stop);
    let stream = params.stream.unwrap_or(false);
    let include_usage = match &params.stream_options {
        Some(options) if !stream => {
            let _ = options;
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed with `stream: true`",
            ));
        }
        Some(options) => options.include_usage,
        None => false,
    };
    if let Some(user) = &params.user {
        log::debug!("request from user {user:?}");
    }
    Ok(GenerationPlan {
        config,
        n: n as usize,
        stream,
        include_usage,
    })
}

/// `max_tokens` or `max_completion_tokens` (they must agree when both are given).
pub fn max_tokens(
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
) -> Result<Option<u64>, ApiError> {
    match (max_tokens, max_completion_tokens) {
        (Some(a), Some(b)) if a != b => Err(ApiError::invalid(
            "max_completion_tokens",
            format!("`max_tokens` ({a}) and `max_completion_tokens` ({b}) disagree"),
        )),
        (a, b) => Ok(b.or(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::protocol::{StopField, StreamOptions};

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    fn err_param(result: Result<GenerationPlan, ApiError>) -> String {
        result.unwrap_err().param.unwrap()
    }

    #[test]
    fn out_of_range_values_name_their_parameter() {
        let d = SamplingConfig::default();
        let go = |p: SamplingParams| plan(&p, None, &d, 100, vec![]);
        assert_eq!(
            err_param(go(SamplingParams {
                temperature: Some(2.5),
                ..params()
            })),
            "temperature"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                temperature: Some(f32::NAN),
                ..params()
            })),
            "temperature"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                top_p: Some(0.0),
                ..params()
            })),
            "top_p"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                top_k: Some(-2),
                ..params()
            })),
            "top_k"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                min_p: Some(1.5),
                ..params()
            })),
            "min_p"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                repetition_penalty: Some(0.0),
                ..params()
            })),
            "repetition_penalty"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                n: Some(0),
                ..params()
            })),
            "n"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                n: Some(17),
                ..params()
            })),
            "n"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                presence_penalty: Some(0.5),
                ..params()
            })),
            "presence_penalty"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                frequency_penalty: Some(-1.0),
                ..params()
            })),
            "frequency_penalty"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                stop: Some(StopField::One(String::new())),
                ..params()
            })),
            "stop"
        );
        assert_eq!(
            err_param(go(SamplingParams {
                stream_options: Some(StreamOptions {
                    include_usage: true
                }),
                ..params()
            })),
            "stream_options"
        );
        assert_eq!(
            err_param(plan(&params(), Some(0), &d, 100, vec![])),
            "max_tokens"
        );
        assert!(max_tokens(Some(3), Some(4)).is_err());
        assert_eq!(max_tokens(Some(3), None).unwrap(), Some(3));
    }

    #[test]
    fn values_reach_the_generation_config() {
        let p = SamplingParams {
            temperature: Some(0.0),
            top_p: Some(0.5),
            top_k: Some(-1),
            min_p: Some(0.1),
            repetition_penalty: Some(1.2),
            seed: Some(-1),
            n: Some(3),
            stop: Some(StopField::Many(vec!["\n\n".into()])),
            presence_penalty: Some(0.0),
            stream: Some(true),
            stream_options: Some(StreamOptions {
                include_usage: true,
            }),
            ..params()
        };
        let plan = plan(&p, Some(7), &SamplingConfig::default(), 100, vec![2]).unwrap();
        let s = &plan.config.sampling;
        assert_eq!(
            (
                s.temperature,
                s.top_p,
                s.top_k,
                s.min_p,
                s.repetition_penalty
            ),
            (0.0, 0.5, 0, 0.1, 1.2)
        );
        assert_eq!(s.seed, u64::MAX);
        assert_eq!(plan.choice(1).sampling.seed, 0);
        assert_eq!(plan.config.max_new_tokens, 7);
        assert_eq!(plan.config.overflow, OverflowPolicy::Error);
        assert_eq!(plan.config.stop_strings, vec!["\n\n".to_string()]);
        assert_eq!(plan.config.stop_token_ids, vec![2]);
        assert_eq!((plan.n, plan.stream, plan.include_usage), (3, true, true));
        // No max_tokens: up to the end of the context.
        let open = super::plan(&params(), None, &SamplingConfig::default(), 100, vec![]).unwrap();
        assert_eq!(open.config.max_new_tokens, 100);
        assert_eq!(open.config.overflow, OverflowPolicy::ClampNewTokens);
    }
}
