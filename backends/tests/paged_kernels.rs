//! Paged attention: the fused CPU kernel (Flex, f32) against the composite reference on
//! packed batches of decoding and prefilling sequences (GQA ratios 1, 2, 4; partly filled and
//! scattered blocks; stale data in the pool), the in-place pool write, and the row invariance
//! the serving engine relies on: a sequence's rows are bit-identical alone or in any batch,
//! and chunked prefill gives the bits of one call. Also the dense kernel's two regimes.
//! Tolerance against composite: 1e-5 max-abs (f32 results of order 1).

#![cfg(feature = "flex")]

use burn::tensor::{Distribution, Tensor};
use internlm2_backends::kernels::{PagedLayout, PagedSequence, composite};
use internlm2_backends::{Cpu, Kernels};

const TOLERANCE: f32 = 1e-5;

fn random<const D: usize>(shape: [usize; D]) -> Tensor<Cpu, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

/// A deep copy (its own buffer, so the fused kernel may write it in place).
fn copy<const D: usize>(t: &Tensor<Cpu, D>) -> Tensor<Cpu, D> {
    Tensor::from_data(t.to_data(), &Default::default())
}

fn host<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn seq(blocks: &[u32], past: usize, len: usize) -> PagedSequence {
    PagedSequence {
        blocks: blocks.to_vec(),
        past,
        len,
    }
}

/// Decoding rows, a prefill from scratch, a chunk after a partly filled block, a decode at
/// a block boundary.
fn mixed_layout() -> PagedLayout {
    PagedLayout {
        block_size: 4,
        sequences: vec![
            seq(&[3, 7], 5, 1),
            seq(&[0, 5, 9], 0, 9),
            seq(&[1, 2, 4], 6, 5),
            seq(&[6, 8, 10], 8, 1),
        ],
    }
}

struct Case {
    q: Tensor<Cpu, 4>,
    k: Tensor<Cpu, 4>,
    v: Tensor<Cpu, 4>,
    key_pool: Tensor<Cpu, 4>,
    value_pool: Tensor<Cpu, 4>,
}

fn case(layout: &PagedLayout, blocks: usize, nkv: usize, groups: usize, d: usize) -> Case {
    let tokens = layout.tokens();
    let nh = nkv * groups;
    let bs = layout.block_size;
    Case {
        // The layouts the model produces: [1, T, heads, d] viewed as [1, heads, T, d].
        q: random([1, tokens, nh, d]).swap_dims(1, 2),
        k: random([1, tokens, nkv, d]).swap_dims(1, 2),
        v: random([1, tokens, nkv, d]).swap_dims(1, 2),
        key_pool: random([blocks, nkv, bs, d]),
        value_pool: random([blocks, nkv, bs, d]),
    }
}

fn fused(c: &Case, layout: &PagedLayout) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let out = Cpu::paged_attention(
        c.q.clone(),
        c.k.clone(),
        c.v.clone(),
        copy(&c.key_pool),
        copy(&c.value_pool),
        layout,
    );
    (host(out.output), host(out.key_pool), host(out.value_pool))
}

#[test]
fn fused_matches_composite() {
    for groups in [1, 2, 4] {
        // 16, 64 and 144: the AVX-512 flavour where the CPU has it (144: a partial
        // 128-wide chunk of the value sum); 8 and 72: the AVX2 flavour where the CPU has it
        // (72: a partial 64-wide chunk); 20: the portable one.
        for d in [8, 16, 20, 64, 72, 144] {
            let layout = mixed_layout();
            let c = case(&layout, 12, 2, groups, d);
            let (out, keys, values) = fused(&c, &layout);
            let reference = composite::paged_attention(
                c.q.clone(),
                c.k.clone(),
                c.v.clone(),
                copy(&c.key_pool),
                copy(&c.value_pool),
                &layout,
            );
            let worst = max_diff(&out, &host(reference.output));
            assert!(worst < TOLERANCE, "G={groups} d={d}: {worst}");
            // The pool writes are copies: exact.
            assert_eq!(keys, host(reference.key_pool));
            assert_eq!(values, host(reference.value_pool));
        }
    }
}

#[test]
fn composite_equals_contiguous_attention() {
    // One sequence whose blocks are in order reduces to plain causal attention over the
    // first slots of the pool.
    let layout = PagedLayout {
        block_size: 4,
        sequences: vec![seq(&[0, 1, 2], 3, 6)],
    };
    let c = case(&layout, 3, 2, 2, 8);
    let out = composite::paged_attention(
        c.q.clone(),
        c.k.clone(),
        c.v.clone(),
        copy(&c.key_pool),
        copy(&c.value_pool),
        &layout,
    );
    // [3 blocks, kv, 4, d] -> [1, kv, 12, d] -> the first 9 slots.
    let flat = |p: Tensor<Cpu, 4>| {
        p.swap_dims(0, 1)
            .reshape([1, 2, 12, 8])
            .slice([0..1, 0..2, 0..9, 0..8])
    };
    let expected = composite::causal_attention(
        c.q.clone(),
        flat(out.key_pool.clone()),
        flat(out.value_pool.clone()),
        &internlm2_backends::AttentionMask::causal(3),
    );
    assert_eq!(host(out.output), host(expected));
}

#[test]
fn the_pool_is_written_in_place() {
    let layout = mixed_layout();
    let c = case(&layout, 12, 2, 2, 8);
    let (kp, vp) = (copy(&c.key_pool), copy(&c.value_pool));
    let address = |t: &Tensor<Cpu, 4>| t.clone().into_primitive().tensor().bytes().as_ptr();
    let before = (address(&kp), address(&vp));
    let out = Cpu::paged_attention(c.q, c.k, c.v, kp, vp, &layout);
    assert_eq!((address(&out.key_pool), address(&out.value_pool)), before);
}

/// Rows `rows` of `[1, heads, T, d]` data, per head.
fn rows(
    out: &[f32],
    heads: usize,
    tokens: usize,
    d: usize,
    rows: std::ops::Range<usize>,
) -> Vec<f32> {
    let mut picked = Vec::new();
    for h in 0..heads {
        for t in rows.clone() {
            let at = (h * tokens + t) * d;
            picked.extend_from_slice(&out[at..at + d]);
        }
    }
    picked
}

#[test]
fn a_sequence_gets_the_same_bits_alone_or_batched() {
    let (nkv, groups, d) = (2, 4, 16);
    let nh = nkv * groups;
    let layout = mixed_layout();
    let c = case(&layout, 12, nkv, groups, d);
    let (batched, _, _) = fused(&c, &layout);
    let offsets = layout.offsets();
    for (i, s) in layout.sequences.iter().enumerate() {
        let alone = PagedLayout {
            block_size: 4,
            sequences: vec![s.clone()],
        };
        let span = offsets[i]..offsets[i] + s.len;
        let pick =
            |t: &Tensor<Cpu, 4>, heads| t.clone().slice([0..1, 0..heads, span.clone(), 0..d]);
        let single = Case {
            q: pick(&c.q, nh),
            k: pick(&c.k, nkv),
            v: pick(&c.v, nkv),
            key_pool: copy(&c.key_pool),
            value_pool: copy(&c.value_pool),
        };
        let (out, _, _) = fused(&single, &alone);
        assert_eq!(
            out,
            rows(&batched, nh, layout.tokens(), d, span),
            "sequence {i}"
        );
    }
}

#[test]
fn chunked_prefill_gives_the_bits_of_one_call() {
    let (nkv, groups, d) = (2, 2, 16);
    let nh = nkv * groups;
    let blocks = [4u32, 0, 7, 2, 5];
    let whole = PagedLayout {
        block_size: 4,
        sequences: vec![seq(&blocks, 0, 19)],
    };
    let c = case(&whole, 8, nkv, groups, d);
    let (one_call, _, _) = fused(&c, &whole);
    // The same 19 tokens in chunks of 7, 1 and 11, the pool carried across calls.
    let mut pools = (copy(&c.key_pool), copy(&c.value_pool));
    let mut chunked = vec![Vec::new(); nh];
    for (start, len) in [(0, 7), (7, 1), (8, 11)] {
        let layout = PagedLayout {
            block_size: 4,
            sequences: vec![seq(&blocks, start, len)],
        };
        let pick =
            |t: &Tensor<Cpu, 4>, heads| t.clone().slice([0..1, 0..heads, start..start + len, 0..d]);
        let out = Cpu::paged_attention(
            pick(&c.q, nh),
            pick(&c.k, nkv),
            pick(&c.v, nkv),
            pools.0,
            pools.1,
            &layout,
        );
        pools = (out.key_pool, out.value_pool);
        let out = host(out.output);
        for (h, acc) in chunked.iter_mut().enumerate() {
            acc.extend_from_slice(&out[h * len * d..(h + 1) * len * d]);
        }
    }
    assert_eq!(chunked.concat(), one_call);
}

#[test]
fn dense_regimes_are_row_invariant() {
    let skinny = Cpu::dense_skinny_rows();
    assert!(skinny > 0, "the fused CPU dense has a per-row kernel");
    for (k, n) in [(64, 176), (512, 768), (1536, 512)] {
        let w = random([n, k]);
        let x = random([1, 40, k]);
        let call = |rows: std::ops::Range<usize>| {
            host(Cpu::dense(
                x.clone().slice([0..1, rows, 0..k]),
                w.clone(),
                None,
            ))
        };
        // Per-row regime: a row alone or among up to `skinny` rows.
        let many = call(0..skinny);
        for r in [0, skinny / 2, skinny - 1] {
            assert_eq!(
                call(r..r + 1),
                many[r * n..(r + 1) * n],
                "k={k} skinny row {r}"
            );
        }
        // GEMM regime: the same bits for a row in any call of more than `skinny` rows.
        let big = call(0..40);
        let small = call(3..3 + skinny + 1);
        assert_eq!(small, big[3 * n..(4 + skinny) * n], "k={k} gemm rows");
    }
}
