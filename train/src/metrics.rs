//! Training observability: per-step records as JSONL, an MFU estimate, and a loss-curve PNG.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;
use internlm2::InternLM2Config;

/// One optimiser step as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Global step (1-based: the number of steps done after this one).
    pub step: usize,
    /// Curriculum phase name.
    pub phase: String,
    /// Mean loss per counted target.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Input tokens of the step.
    pub tokens: usize,
    /// Input tokens per second.
    pub tokens_per_s: f64,
    /// Model FLOPs utilisation: `flops_per_token * tokens_per_s / peak_flops`.
    pub mfu: f64,
    /// Seconds of the step.
    pub seconds: f64,
}

/// Training FLOPs per token: `6 * N` for the matrix multiplies (forward and backward, `N`
/// the parameters except the input embedding table, which is a lookup) plus
/// `12 * layers * hidden * seq_len` for attention scores and values (PaLM's formula).
pub fn train_flops_per_token(config: &InternLM2Config, seq_len: usize) -> f64 {
    let dense = (config.num_parameters() - config.vocab_size * config.hidden_size) as f64;
    6.0 * dense + 12.0 * (config.num_hidden_layers * config.hidden_size * seq_len) as f64
}

/// Appends [`StepRecord`]s to a JSONL file.
#[derive(Debug)]
pub struct JsonlLog {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlLog {
    /// Opens (appending) or creates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TrainError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| TrainError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TrainError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path, file })
    }

    /// Writes one record as a line.
    pub fn write(&mut self, record: &StepRecord) -> Result<(), TrainError> {
        let line = serde_json::to_string(record).expect("records serialise");
        writeln!(self.file, "{line}").map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// The first TrueType font found in the usual system folders, for chart labels.
fn system_font() -> Option<&'static [u8]> {
    const CANDIDATES: [&str; 4] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/Library/Fonts/Arial.ttf",
    ];
    static FONT: std::sync::OnceLock<Option<&'static [u8]>> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        CANDIDATES
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .map(|bytes| &*Box::leak(bytes.into_boxed_slice()))
    })
}

/// Draws `losses` (one per step) as a PNG line chart. Axis labels need a system TrueType font
/// (DejaVu Sans); without one the chart is drawn unlabelled.
pub fn plot_loss_curve(
    losses: &[f64],
    path: impl AsRef<Path>,
    title: &str,
) -> Result<(), TrainError> {
    use plotters::prelude::*;
    let path = path.as_ref();
    let err = |e: String| TrainError::Plot {
        path: path.to_path_buf(),
        reason: e,
    };
    if losses.is_empty() {
        return Err(err("no losses to plot".into()));
    }
    let labelled = system_font().is_some_and(|font| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, font).is_ok()
    });
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (lo, hi) = losses
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &l| (lo.min(l), hi.max(l)));
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if labelled {
        builder
            .caption(title, ("sans-serif", 24))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(1f64..losses.len().max(2) as f64, (lo - pad)..(hi + pad))
        .map_err(|e| err(e.to_string()))?;
    if labelled {
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .draw_series(LineSeries::new(
            losses.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l)),
            &BLUE,
        ))
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_per_token_by_hand() {
        // V 10, H 4, I 8, 1 layer, 2 heads, 2 kv heads: params = 40 + (8 + 48 + 16 + 96) + 4 + 40.
        let c = InternLM2Config::new(10, 4, 8, 1, 2, 2);
        assert_eq!(c.num_parameters(), 40 + 8 + 48 + 16 + 96 + 4 + 40);
        let dense = (c.num_parameters() - 40) as f64;
        assert_eq!(
            train_flops_per_token(&c, 16),
            6.0 * dense + 12.0 * 4.0 * 16.0
        );
    }

    #[test]
    fn loss_curve_png_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        plot_loss_curve(&[5.0, 4.0, 3.5, 3.2, 3.0], &path, "test").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(plot_loss_curve(&[], &path, "empty").is_err());
    }
}
