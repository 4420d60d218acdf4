//! Row groups: how the rows of a packed input are split into separate dense calls, so that
//! every row is computed in a fixed numeric regime whatever else is in the batch.
//!
//! A backend's [`dense`](Kernels::dense) may compute a row differently depending on how many
//! rows the call has: the fused CPU kernel runs a per-row ("skinny") kernel up to
//! [`Kernels::dense_skinny_rows`] rows and a GEMM above. Within each regime a row's result
//! does not depend on the other rows. The serving engine therefore puts the rows that
//! `generate` computes alone (decoding steps, the logits) into calls of at most that many
//! rows, and the rows it computes in a GEMM (the prompt) into calls of more, so that a
//! sequence gets the same bits alone or batched.

use burn::tensor::{Int, Tensor, TensorData};
use internlm2_backends::Kernels;

/// One dense call: these rows (in this order), padded with zero rows to at least
/// `min_rows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowGroup {
    /// Rows of the packed input, in the order they go into the call.
    pub rows: Vec<usize>,
    /// Rows the call must have at least (zero rows are appended and their results dropped).
    pub min_rows: usize,
}

/// A partition of the rows of a `[1, tokens, features]` input into dense calls. Empty (the
/// default): one call over all rows.
///
/// ```
/// use internlm2::model::rows::RowGroups;
/// // Rows 0, 2 decode (per-row regime), rows 1, 3, 4 are prompt tokens (GEMM regime),
/// // with a per-row kernel of up to 2 rows.
/// let groups = RowGroups::by_regime(&[true, false, true, false, false], 2);
/// assert_eq!(groups.groups().len(), 2);
/// assert_eq!(groups.groups()[1].min_rows, 3);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowGroups {
    groups: Vec<RowGroup>,
}

impl RowGroups {
    /// One call over all rows.
    pub fn single() -> Self {
        Self::default()
    }

    /// Explicit groups; every row of the input must be in exactly one.
    pub fn new(groups: Vec<RowGroup>) -> Self {
        Self { groups }
    }

    /// Groups for a backend whose dense kernel runs per row up to `skinny_rows` rows: rows
    /// flagged `true` go into calls of at most `skinny_rows` rows, the others into one call
    /// padded past `skinny_rows`. With `skinny_rows == 0`, one call over all rows.
    pub fn by_regime(per_row: &[bool], skinny_rows: usize) -> Self {
        if skinny_rows == 0 {
            return Self::single();
        }
        let (skinny, gemm): (Vec<usize>, Vec<usize>) =
            (0..per_row.len()).partition(|&i| per_row[i]);
        let mut groups: Vec<RowGroup> = skinny
            .chunks(skinny_rows)
            .map(|rows| RowGroup {
                rows: rows.to_vec(),
                min_rows: 0,
            })
            .collect();
        if !gemm.is_empty() {
            groups.push(RowGroup {
                rows: gemm,
                min_rows: skinny_rows + 1,
            });
        }
        Self { groups }
    }

    /// The groups (empty: one call over all rows).
    pub fn groups(&self) -> &[RowGroup] {
        &self.groups
    }

    /// Runs `f` (a dense layer) once per group and puts the rows back in their places.
    ///
    /// # Shapes
    /// `x`: `[1, tokens, in]` -> `[1, tokens, out]` (any batch when the groups are empty)
    ///
    /// # Panics
    /// If the groups do not cover `0..tokens` exactly once.
    pub fn apply<B: Kernels>(
        &self,
        x: Tensor<B, 3>,
        f: impl Fn(Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [b, tokens, features] = x.dims();
        let trivial = match self.groups.as_slice() {
            [] => true,
            [only] => only.min_rows <= tokens && only.rows.iter().copied().eq(0..tokens),
            _ => false,
        };
        if trivial {
            return f(x);
        }
        assert_eq!(
            b, 1,
            "row groups split a packed [1, tokens, features] input"
        );
        let mut order = Vec::with_capacity(tokens);
        let device = x.device();
        let index = |rows: &[usize]| {
            let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [rows.len()]), &device)
        };
        let mut outputs = Vec::with_capacity(self.groups.len());
        for group in self.groups.iter().filter(|g| !g.rows.is_empty()) {
            let n = group.rows.len();
            let contiguous = group.rows.windows(2).all(|w| w[1] == w[0] + 1);
            let mut part = if contiguous {
                let start = group.rows[0];
                x.clone().slice([0..1, start..start + n, 0..features])
            } else {
                x.clone().select(1, index(&group.rows))
            };
            if n < group.min_rows {
                let pad = Tensor::<B, 3>::zeros([1, group.min_rows - n, features], &device)
                    .cast(x.dtype());
                part = Tensor::cat(vec![part, pad], 1);
            }
            let y = f(part);
            let out = y.dims()[2];
            outputs.push(y.slice([0..1, 0..n, 0..out]));
            order.extend_from_slice(&group.rows);
        }
        assert_eq!(order.len(), tokens, "row groups must cover every row once");
        let y = Tensor::cat(outputs, 1);
        if order.iter().copied().eq(0..tokens) {
            return y;
        }
        let mut inverse = vec![0usize; tokens];
        for (at, &row) in order.iter().enumerate() {
            assert!(row < tokens, "row {row} outside the input of {tokens}");
            inverse[row] = at;
        }
        y.select(1, index(&inverse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use internlm2_backends::Cpu;

    #[test]
    fn regimes_split_into_bounded_and_padded_calls() {
        let g = RowGroups::by_regime(&[true, false, true, true, false], 2);
        let rows: Vec<_> = g
            .groups()
            .iter()
            .map(|g| (g.rows.clone(), g.min_rows))
            .collect();
        assert_eq!(rows, vec![(vec![0, 2], 0), (vec![3], 0), (vec![1, 4], 3)]);
        assert_eq!(RowGroups::by_regime(&[true, false], 0), RowGroups::single());
    }

    #[test]
    fn apply_puts_rows_back_and_sees_the_padding() {
        let device = Default::default();
        let x = Tensor::<Cpu, 3>::from_floats([[[1.0], [2.0], [3.0], [4.0]]], &device);
        let g = RowGroups::new(vec![
            RowGroup {
                rows: vec![1, 3],
                min_rows: 0,
            },
            RowGroup {
                rows: vec![0, 2],
                min_rows: 5,
            },
        ]);
        // f reports how many rows its call had, plus the row's value.
        let y = g.apply(x, |t| {
            let rows = t.dims()[1] as f32;
            t.add_scalar(10.0 * rows)
        });
        let y = y.into_data().into_vec::<f32>().unwrap();
        assert_eq!(y, vec![51.0, 22.0, 53.0, 24.0]);
    }
}
