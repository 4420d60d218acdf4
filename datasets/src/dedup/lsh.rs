//! Locality-sensitive hashing by banding, candidate pairs and their verification.
//!
//! The signature of `bands * rows` values is cut into `bands` bands of `rows` consecutive
//! values; two documents are a *candidate pair* when all values of at least one band agree.
//! For true Jaccard similarity `J` that happens with probability
//! `P(J) = 1 - (1 - J^rows)^bands` (the S-curve, [`candidate_probability`]). With the default
//! 32 bands x 4 rows:
//!
//! | J | 0.3 | 0.5 | 0.6 | 0.7 | 0.8 | 0.9 |
//! |---|---|---|---|---|---|---|
//! | P(candidate) | 0.229 | 0.873 | 0.988 | 0.99985 | 1 - 4.8e-8 | 1 - 1.5e-15 |
//!
//! so pairs at the 0.7 threshold and above are practically never missed. The curve's
//! midpoint `(1/bands)^(1/rows)` = 0.42 lies well below the threshold; the low-similarity
//! candidates it admits are removed by *verification*: a candidate is a near-duplicate only
//! when its signature-estimated Jaccard (fraction of equal values over all `num_perm`) is
//! `>= threshold`. (16 x 8 would find a J = 0.8 pair with probability 0.947 only.)
//!
//! Pairs are enumerated band by band, sorted by band hash; within a bucket every pair not
//! already in one cluster is verified, so the clusters are exactly the connected components
//! of the verified-pair graph, whatever the order of documents.
//!
//! ```
//! use internlm2_datasets::dedup::candidate_probability;
//! assert!(candidate_probability(0.8, 32, 4) > 0.999_999);
//! assert!((candidate_probability(0.5, 32, 4) - 0.8735).abs() < 1e-3);
//! ```

use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

use super::union_find::UnionFind;

/// Probability that a pair with Jaccard similarity `jaccard` shares at least one band:
/// `1 - (1 - jaccard^rows)^bands`.
pub fn candidate_probability(jaccard: f64, bands: usize, rows: usize) -> f64 {
    1.0 - (1.0 - jaccard.powi(rows as i32)).powi(bands as i32)
}

/// Counts of one LSH pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LshCounts {
    /// Candidate pairs verified (pairs already in one cluster are not counted).
    pub candidates: u64,
    /// Candidates whose estimated Jaccard reached the threshold.
    pub verified: u64,
}

/// Number of equal little-endian `u32` values of two raw signatures.
#[inline]
fn equal_values(a: &[u8], b: &[u8]) -> usize {
    a.chunks_exact(4)
        .zip(b.chunks_exact(4))
        .filter(|(x, y)| x == y)
        .count()
}

/// Join every verified candidate pair of `sigs` (raw little-endian signatures, `None` for
/// documents without shingles) in `uf`.
pub(crate) fn link_near_duplicates(
    sigs: &[Option<&[u8]>],
    bands: usize,
    rows: usize,
    threshold: f64,
    uf: &mut UnionFind,
) -> LshCounts {
    let num_perm = bands * rows;
    let mut counts = LshCounts::default();
    let mut keys: Vec<(u64, u32)> = Vec::new();
    for band in 0..bands {
        let (lo, hi) = (band * rows * 4, (band + 1) * rows * 4);
        keys.clear();
        keys.par_extend(
            sigs.par_iter()
                .enumerate()
                .filter_map(|(g, s)| s.map(|s| (xxh3_64(&s[lo..hi]), g as u32))),
        );
        keys.par_sort_unstable();
        let mut i = 0;
        while i < keys.len() {
            let mut j = i + 1;
            while j < keys.len() && keys[j].0 == keys[i].0 {
                j += 1;
            }
            for p in i + 1..j {
                for q in i..p {
                    let (x, y) = (keys[q].1, keys[p].1);
                    if uf.find(x) == uf.find(y) {
                        continue;
                    }
                    counts.candidates += 1;
                    let (sx, sy) = (sigs[x as usize], sigs[y as usize]);
                    if let (Some(sx), Some(sy)) = (sx, sy) {
                        let estimate = equal_values(sx, sy) as f64 / num_perm as f64;
                        if estimate >= threshold {
                            counts.verified += 1;
                            uf.union(x, y);
                        }
                    }
                }
            }
            i = j;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn s_curve_values() {
        // 1 - (1 - 0.8^4)^32 = 1 - 0.5904^32 = 1 - 4.7e-8.
        assert!((candidate_probability(0.8, 32, 4) - (1.0 - 4.7e-8)).abs() < 1e-8);
        assert!((candidate_probability(0.8, 16, 8) - 0.947).abs() < 1e-3);
        // 0.6^4 = 0.1296, 0.8704^32 = 0.01178.
        assert!((candidate_probability(0.6, 32, 4) - 0.98822).abs() < 1e-4);
        assert_eq!(candidate_probability(1.0, 32, 4), 1.0);
        assert_eq!(candidate_probability(0.0, 32, 4), 0.0);
    }

    #[test]
    fn banding_and_verification() {
        // 4 bands x 2 rows. doc1 agrees with doc0 on 6 of 8 values (0.75, bands 0-2 equal);
        // doc2 agrees with doc0 on 2 of 8 (0.25, band 0 only): a candidate that fails
        // verification at 0.7; doc3 shares nothing.
        let d0 = raw(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let d1 = raw(&[1, 2, 3, 4, 5, 6, 70, 80]);
        let d2 = raw(&[1, 2, 30, 40, 50, 60, 70, 81]);
        let d3 = raw(&[9, 9, 9, 9, 9, 9, 9, 9]);
        let sigs = [
            Some(&d0[..]),
            Some(&d1[..]),
            Some(&d2[..]),
            Some(&d3[..]),
            None,
        ];
        let mut uf = UnionFind::new(5);
        let counts = link_near_duplicates(&sigs, 4, 2, 0.7, &mut uf);
        // Band 0 bucket {0,1,2}: pairs (0,1) joined, (0,2) and (1,2) fail; bands 1, 2: (0,1)
        // already joined; band 3: d1 and d2 share (70, 80/81)? no -> nothing.
        assert_eq!(
            counts,
            LshCounts {
                candidates: 3,
                verified: 1
            }
        );
        assert_eq!(uf.find(0), uf.find(1));
        assert_ne!(uf.find(0), uf.find(2));
        assert_eq!(uf.set_size(3), 1);
    }
}
