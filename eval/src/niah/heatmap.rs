//! The needle heatmap, in the style of OpenCompass's `tools/tools_needleinahaystack.py`:
//!
//! ```text
//! pivot_table = pd.pivot_table(df, values='Score', index=['Document Depth'],
//!                              columns=['Context Length'], aggfunc='mean')
//! mean_scores = pivot_table.mean().values
//! overall_score = mean_scores.mean()
//! cmap = LinearSegmentedColormap.from_list('custom_cmap', ['#F0496E', '#EBB839', '#0CD79F'])
//! sns.heatmap(pivot_table, cmap=cmap, ..., vmin=0, vmax=100)
//! ax2.plot(x_data, y_data, color='white', marker='o', ..., label='Average Depth Score')
//! ```
//!
//! Depth percents are the rows (0 at the top), context lengths the columns; each cell is the
//! mean score of its repeats; the white line is the per-length mean (0 at the bottom, 100 at
//! the top) and the overall mean (the mean of the per-length means) is in the title.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use super::run::NeedleRecord;
use crate::error::{EvalError, Result};

/// Mean scores of a grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heatmap {
    /// Column labels, ascending.
    pub lengths: Vec<usize>,
    /// Row labels, ascending.
    pub depths: Vec<f64>,
    /// `[depth][length]` mean score, `None` where no record exists.
    pub scores: Vec<Vec<Option<f64>>>,
    /// `[depth][length]` records behind each mean.
    pub counts: Vec<Vec<usize>>,
    /// Per length, the mean of its cells (cells without records left out, as pandas does).
    pub length_means: Vec<Option<f64>>,
    /// The mean of the per-length means.
    pub overall: Option<f64>,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl Heatmap {
    /// Pivots the records that fall on the grid `lengths` x `depths`.
    pub fn from_records(lengths: &[usize], depths: &[f64], records: &[NeedleRecord]) -> Self {
        let mut lengths = lengths.to_vec();
        lengths.sort_unstable();
        lengths.dedup();
        let mut depths = depths.to_vec();
        depths.sort_by(f64::total_cmp);
        depths.dedup_by(|a, b| a.to_bits() == b.to_bits());
        let mut sums = vec![vec![0.0; lengths.len()]; depths.len()];
        let mut counts = vec![vec![0usize; lengths.len()]; depths.len()];
        for r in records {
            let col = lengths.iter().position(|&l| l == r.length);
            let row = depths.iter().position(|d| d.to_bits() == r.depth.to_bits());
            if let (Some(row), Some(col)) = (row, col) {
                sums[row][col] += r.score;
                counts[row][col] += 1;
            }
        }
        let scores: Vec<Vec<Option<f64>>> = sums
            .iter()
            .zip(&counts)
            .map(|(s, c)| {
                s.iter()
                    .zip(c)
                    .map(|(&s, &c)| (c > 0).then(|| s / c as f64))
                    .collect()
            })
            .collect();
        let length_means: Vec<Option<f64>> = (0..lengths.len())
            .map(|col| mean(scores.iter().filter_map(|row| row[col])))
            .collect();
        let overall = mean(length_means.iter().flatten().copied());
        Self {
            lengths,
            depths,
            scores,
            counts,
            length_means,
            overall,
        }
    }
}

/// The colour of a score: `#F0496E` (0) -> `#EBB839` (50) -> `#0CD79F` (100), linear in RGB
/// between the stops, as matplotlib's `LinearSegmentedColormap.from_list` with three colours.
pub fn score_color(score: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 3] = [(0xF0, 0x49, 0x6E), (0xEB, 0xB8, 0x39), (0x0C, 0xD7, 0x9F)];
    let t = (score / 100.0).clamp(0.0, 1.0) * 2.0;
    let (a, b, f) = if t <= 1.0 {
        (STOPS[0], STOPS[1], t)
    } else {
        (STOPS[1], STOPS[2], t - 1.0)
    };
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The first TrueType font of the usual system folders, registered as "sans-serif".
fn register_font() -> bool {
    const CANDIDATES: [&str; 4] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/Library/Fonts/Arial.ttf",
    ];
    static FONT: std::sync::OnceLock<Option<&'static [u8]>> = std::sync::OnceLock::new();
    let font = *FONT.get_or_init(|| {
        CANDIDATES
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .map(|bytes| &*Box::leak(bytes.into_boxed_slice()))
    });
    font.is_some_and(|f| plotters::style::register_font("sans-serif", FontStyle::Normal, f).is_ok())
}

fn depth_label(depth: f64) -> String {
    if depth.fract() == 0.0 {
        format!("{depth:.0}")
    } else {
        format!("{depth:.1}")
    }
}

/// Draws `heatmap` as a PNG (1750 x 800). Labels need a system TrueType font (DejaVu Sans);
/// without one the chart is drawn unlabelled.
pub fn plot_heatmap(heatmap: &Heatmap, path: &Path, title: &str) -> Result<()> {
    let err = |e: String| EvalError::Plot {
        path: path.to_path_buf(),
        reason: e,
    };
    let (ncols, nrows) = (heatmap.lengths.len(), heatmap.depths.len());
    if ncols == 0 || nrows == 0 {
        return Err(err("an empty grid".into()));
    }
    let labelled = register_font();
    let (width, height) = (1750u32, 800u32);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin_top(if labelled { 90 } else { 20 })
        .margin_bottom(if labelled { 90 } else { 20 })
        .margin_left(if labelled { 110 } else { 20 })
        .margin_right(190);
    let mut chart = builder
        .build_cartesian_2d(0f64..ncols as f64, 0f64..nrows as f64)
        .map_err(|e| err(e.to_string()))?;
    // Row r (depth r, ascending) is drawn from the top.
    let top = |row: usize| (nrows - row) as f64;
    chart
        .draw_series(heatmap.scores.iter().enumerate().flat_map(|(row, cells)| {
            cells.iter().enumerate().map(move |(col, score)| {
                let color = score.map_or(RGBColor(0xDD, 0xDD, 0xDD), score_color);
                Rectangle::new(
                    [(col as f64, top(row) - 1.0), (col as f64 + 1.0, top(row))],
                    color.filled(),
                )
            })
        }))
        .map_err(|e| err(e.to_string()))?;
    // The per-length means on a 0..100 scale over the full height.
    let points: Vec<(f64, f64)> = heatmap
        .length_means
        .iter()
        .enumerate()
        .filter_map(|(col, m)| m.map(|m| (col as f64 + 0.5, m / 100.0 * nrows as f64)))
        .collect();
    chart
        .draw_series(LineSeries::new(points.clone(), WHITE.stroke_width(3)))
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 7, WHITE.filled())))
        .map_err(|e| err(e.to_string()))?;

    let (xr, yr) = chart.plotting_area().get_pixel_range();
    // The colour bar: 0 at the bottom, 100 at the top.
    let (bar_left, bar_right) = (xr.end + 40, xr.end + 70);
    let span = (yr.end - yr.start).max(1);
    for i in 0..span {
        let score = 100.0 * (1.0 - i as f64 / span as f64);
        root.draw(&Rectangle::new(
            [(bar_left, yr.start + i), (bar_right, yr.start + i + 1)],
            score_color(score).filled(),
        ))
        .map_err(|e| err(e.to_string()))?;
    }
    if !labelled {
        return root.present().map_err(|e| err(e.to_string()));
    }

    let font = |size: i32, h: HPos, v: VPos| {
        ("sans-serif", size)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(h, v))
    };
    let text = |s: String, at: (i32, i32), style: &TextStyle| {
        root.draw(&Text::new(s, at, style.clone()))
            .map_err(|e| err(e.to_string()))
    };
    let overall = heatmap
        .overall
        .map_or("n/a".to_string(), |o| format!("{o:.2}"));
    text(
        format!("{title}: overall score {overall}"),
        ((xr.start + xr.end) / 2, 30),
        &font(26, HPos::Center, VPos::Center),
    )?;
    text(
        "Fact retrieval across context lengths and depths".into(),
        ((xr.start + xr.end) / 2, 62),
        &font(18, HPos::Center, VPos::Center),
    )?;
    for (col, length) in heatmap.lengths.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(col as f64 + 0.5, 0.0));
        text(
            length.to_string(),
            (x, y + 10),
            &font(16, HPos::Center, VPos::Top),
        )?;
    }
    for (row, depth) in heatmap.depths.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(0.0, top(row) - 0.5));
        text(
            depth_label(*depth),
            (x - 10, y),
            &font(16, HPos::Right, VPos::Center),
        )?;
    }
    text(
        "Token Limit".into(),
        ((xr.start + xr.end) / 2, yr.end + 50),
        &font(20, HPos::Center, VPos::Center),
    )?;
    root.draw(&Text::new(
        "Depth Percent",
        (xr.start - 75, (yr.start + yr.end) / 2),
        font(20, HPos::Center, VPos::Center).transform(FontTransform::Rotate270),
    ))
    .map_err(|e| err(e.to_string()))?;
    for tick in (0..=100).step_by(20) {
        let y = yr.end - (span as f64 * tick as f64 / 100.0).round() as i32;
        text(
            tick.to_string(),
            (bar_right + 8, y),
            &font(14, HPos::Left, VPos::Center),
        )?;
    }
    root.draw(&Text::new(
        "Score",
        (bar_right + 60, (yr.start + yr.end) / 2),
        font(18, HPos::Center, VPos::Center).transform(FontTransform::Rotate270),
    ))
    .map_err(|e| err(e.to_string()))?;
    // Legend, below the plot on the left (inside it, it would hide high means).
    let (lx, ly) = (xr.start, yr.end + 36);
    root.draw(&Rectangle::new(
        [(lx, ly), (lx + 250, ly + 36)],
        RGBColor(0x33, 0x33, 0x33).mix(0.75).filled(),
    ))
    .map_err(|e| err(e.to_string()))?;
    root.draw(&PathElement::new(
        vec![(lx + 10, ly + 18), (lx + 50, ly + 18)],
        WHITE.stroke_width(3),
    ))
    .map_err(|e| err(e.to_string()))?;
    root.draw(&Circle::new((lx + 30, ly + 18), 6, WHITE.filled()))
        .map_err(|e| err(e.to_string()))?;
    root.draw(&Text::new(
        "Average Depth Score",
        (lx + 60, ly + 18),
        ("sans-serif", 16)
            .into_font()
            .color(&WHITE)
            .pos(Pos::new(HPos::Left, VPos::Center)),
    ))
    .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(length: usize, depth: f64, repeat: usize, score: f64) -> NeedleRecord {
        NeedleRecord {
            length,
            depth,
            repeat,
            seed: repeat as u64,
            prompt_tokens: 0,
            haystack_tokens: 0,
            haystack_cycled: false,
            needle_positions: vec![],
            keywords: vec![],
            found: vec![],
            score,
            answer: String::new(),
        }
    }

    #[test]
    fn pivot_by_hand() {
        let records = [
            record(2000, 0.0, 0, 100.0),
            record(2000, 0.0, 1, 0.0),
            record(2000, 50.0, 0, 100.0),
            record(1000, 0.0, 0, 100.0),
            // Off the grid: ignored.
            record(3000, 0.0, 0, 0.0),
        ];
        let h = Heatmap::from_records(&[2000, 1000], &[50.0, 0.0], &records);
        assert_eq!(h.lengths, [1000, 2000]);
        assert_eq!(h.depths, [0.0, 50.0]);
        assert_eq!(h.scores, [[Some(100.0), Some(50.0)], [None, Some(100.0)]]);
        assert_eq!(h.counts, [[1, 2], [0, 1]]);
        // Length 1000: only depth 0 (100); length 2000: (50 + 100) / 2.
        assert_eq!(h.length_means, [Some(100.0), Some(75.0)]);
        assert_eq!(h.overall, Some(87.5));
    }

    #[test]
    fn colours_at_the_stops() {
        assert_eq!(score_color(0.0), RGBColor(0xF0, 0x49, 0x6E));
        assert_eq!(score_color(50.0), RGBColor(0xEB, 0xB8, 0x39));
        assert_eq!(score_color(100.0), RGBColor(0x0C, 0xD7, 0x9F));
        // Halfway between the first two stops.
        assert_eq!(score_color(25.0), RGBColor(0xEE, 0x81, 0x54));
    }
}
