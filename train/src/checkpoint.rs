//! Checkpoint directories: `dir/step-XXXXXXXX`, written under a temporary name and renamed into
//! place (a crash never leaves a half-written checkpoint under the final name), with the run's
//! [`TrainState`] in `state.json`, the newest `keep_last` kept.
//!
//! What goes inside is up to the caller: a [`Trainer`](crate::Trainer) writes its model,
//! optimiser moments and `config.json`; PPO writes its actor and critic trainers side by side.

use std::path::{Path, PathBuf};

use internlm2::data::DataCursor;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Everything besides weights and optimiser moments that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: usize,
    /// Where the data stream continues.
    pub cursor: DataCursor,
    /// The run's seed (data order derives from it).
    pub seed: u64,
    /// The losses of every step so far (for the loss curve).
    pub losses: Vec<f64>,
}

impl TrainState {
    /// A run that has not started.
    pub fn new(seed: u64) -> Self {
        Self {
            step: 0,
            cursor: DataCursor::default(),
            seed,
            losses: Vec::new(),
        }
    }
}

/// A [`TrainError::Io`] for `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory name of the checkpoint taken after `step` steps.
pub(crate) fn checkpoint_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Writes checkpoint `dir/step-XXXXXXXX` for `state`: `fill` writes the contents into a
/// temporary directory, `state.json` is added, and the directory is renamed into place; then
/// only the newest `keep_last` checkpoints of `dir` are kept. Returns the checkpoint's path.
pub fn write_checkpoint(
    dir: &Path,
    state: &TrainState,
    keep_last: usize,
    fill: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = checkpoint_name(state.step);
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    fill(&tmp)?;
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    std::fs::write(tmp.join("state.json"), json).map_err(io_err(&tmp))?;
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io_err(&target))?;
    }
    std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
    let mut all = list_checkpoints(dir)?;
    all.sort();
    let excess = all.len().saturating_sub(keep_last.max(1));
    for old in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(target)
}

/// The [`TrainState`] saved in checkpoint `path`.
pub fn read_state(path: &Path) -> Result<TrainState, TrainError> {
    let state_path = path.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: state_path,
        reason: e.to_string(),
    })
}

/// The `step-XXXXXXXX` checkpoints in `dir` (unordered).
pub fn list_checkpoints(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    Ok(entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
        })
        .collect())
}

/// The newest checkpoint in `dir`, if any.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    let mut all = list_checkpoints(dir)?;
    all.sort();
    Ok(all.pop())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_atomic_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        for step in [3, 6, 9] {
            let mut state = TrainState::new(1);
            state.step = step;
            write_checkpoint(dir.path(), &state, 2, |tmp| {
                std::fs::write(tmp.join("x"), b"x").map_err(io_err(tmp))
            })
            .unwrap();
        }
        let mut names: Vec<_> = list_checkpoints(dir.path())
            .unwrap()
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["step-00000006", "step-00000009"]);
        let latest = latest_checkpoint(dir.path()).unwrap().unwrap();
        assert_eq!(read_state(&latest).unwrap().step, 9);
        // A failing fill leaves no checkpoint under the final name.
        let mut state = TrainState::new(1);
        state.step = 12;
        let failed = write_checkpoint(dir.path(), &state, 2, |_| {
            Err(TrainError::InvalidConfig {
                reason: "no".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(latest_checkpoint(dir.path()).unwrap(), Some(latest));
    }
}
