//! Strategies for the sizes and sampling parameters of generation requests: mostly usual
//! values, sometimes ones that break arithmetic (`usize::MAX`, NaN, infinities, negatives).
//! Used by the core crate's generation properties and (through `#[path]`) the serving
//! crate's engine properties.
#![allow(dead_code)]

use internlm2::sampling::SamplingConfig;
use proptest::prelude::*;

/// A size: mostly small, sometimes at or near `usize::MAX`.
pub fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..80,
        1 => Just(usize::MAX),
        1 => Just(usize::MAX - 1),
        1 => Just(usize::MAX / 2 + 1),
        1 => any::<usize>(),
    ]
}

/// Mostly `usual`, sometimes a value that breaks arithmetic.
pub fn float(usual: std::ops::Range<f32>) -> impl Strategy<Value = f32> {
    prop_oneof![
        80 => usual,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(-1.0f32),
        1 => Just(0.0f32),
        1 => Just(f32::MAX),
        1 => Just(f32::MIN_POSITIVE),
        1 => any::<f32>(),
    ]
}

pub fn sampling() -> impl Strategy<Value = SamplingConfig> {
    (
        float(0.0..2.0),
        prop_oneof![4 => 0usize..400, 1 => size()],
        float(0.05..1.0),
        float(0.0..0.5),
        float(0.5..2.0),
        any::<u64>(),
    )
        .prop_map(
            |(temperature, top_k, top_p, min_p, repetition_penalty, seed)| SamplingConfig {
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty,
                seed,
            },
        )
}
