//! Helpers shared by the kernel tests.
#![allow(dead_code)]

/// Max |ours - reference| over the outputs `[b, heads, s, d]` (flattened) of queries that see
/// at least one key: a query at slot `past + i` of row `r` sees none when `past + i < pads[r]`
/// (left padding), and such padding queries may return anything.
pub fn worst_visible_diff(
    ours: &[f32],
    reference: &[f32],
    [heads, s, d]: [usize; 3],
    past: usize,
    pads: &[usize],
) -> f32 {
    assert_eq!(ours.len(), reference.len());
    let mut worst = 0f32;
    for (i, (a, r)) in ours.iter().zip(reference).enumerate() {
        let (row, query) = (i / (heads * s * d), (i / d) % s);
        if past + query < pads[row] {
            continue;
        }
        worst = worst.max((a - r).abs());
    }
    worst
}
