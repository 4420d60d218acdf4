//! Data-parallel training across the devices of one node on burn's own collective machinery.
//!
//! One thread and one model replica per device. Each step's rows are split evenly across the
//! replicas; every replica computes its gradients with the loss normalised by the whole
//! step's target count, burn-collective sums the gradients across replicas (all-reduce), and
//! every replica applies the same clipped AdamW step, so the replicas stay identical and the
//! step equals one replica's step over all the rows (tested on two CPU replicas).
//!
//! burn-collective keeps one local server per backend type in the process, so one
//! `DataParallel` group runs at a time (a second one waits for the first to be dropped).
//! Across nodes, burn-collective's global orchestrator joins several such groups; see
//! docs/training.md.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;

use burn::collective::{
    CollectiveConfig, PeerId, ReduceOperation, finish_collective, register, reset_collective,
};
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use internlm2_backends::Kernels;

use super::TrainError;
use super::data::TokenBatch;
use super::optim::OptimizerConfig;
use super::run::StepEngine;
use super::trainer::{StepStats, TrainState, Trainer};
use crate::config::InternLM2Config;
use crate::model::InternLM2;

/// One data-parallel group per process at a time.
static GROUP: Mutex<()> = Mutex::new(());

enum Command {
    Step {
        shards: Vec<TokenBatch>,
        lr: f64,
        normalizer: usize,
    },
    RopeTheta(f64),
    Model,
    Save {
        dir: PathBuf,
        state: TrainState,
        keep_last: usize,
    },
    Stop,
}

enum Reply<B: AutodiffBackend + Kernels>
where
    B::InnerBackend: Kernels,
{
    Step(Result<(f64, f64), TrainError>),
    Saved(Result<PathBuf, TrainError>),
    Model(Box<InternLM2<B>>),
}

struct Worker<B: AutodiffBackend + Kernels>
where
    B::InnerBackend: Kernels,
{
    commands: Sender<Command>,
    replies: Receiver<Reply<B>>,
    thread: Option<JoinHandle<()>>,
}

/// Replicas of a [`Trainer`] on several devices, stepping together.
pub struct DataParallel<B: AutodiffBackend + Kernels>
where
    B::InnerBackend: Kernels,
{
    workers: Vec<Worker<B>>,
    config: InternLM2Config,
    _group: MutexGuard<'static, ()>,
}

fn collective_err(e: impl std::fmt::Debug) -> TrainError {
    TrainError::Collective(format!("{e:?}"))
}

impl<B: AutodiffBackend + Kernels> DataParallel<B>
where
    B::InnerBackend: Kernels,
{
    /// One replica of `model` per device, fresh optimiser states.
    pub fn new(
        model: InternLM2<B>,
        optimizer: OptimizerConfig,
        devices: &[B::Device],
    ) -> Result<Self, TrainError> {
        let trainers = devices
            .iter()
            .map(|device| Trainer::new(model.clone().fork(device), optimizer.clone()))
            .collect();
        Self::from_trainers(trainers, devices)
    }

    /// Replicas restored from one checkpoint (see [`Trainer::load_checkpoint`]).
    pub fn load_checkpoint(
        path: &Path,
        optimizer: OptimizerConfig,
        devices: &[B::Device],
    ) -> Result<(Self, TrainState), TrainError> {
        let mut state = None;
        let mut trainers = Vec::with_capacity(devices.len());
        for device in devices {
            let (trainer, s) = Trainer::load_checkpoint(path, optimizer.clone(), device)?;
            trainers.push(trainer);
            state = Some(s);
        }
        let state = state.ok_or_else(|| TrainError::InvalidConfig("no devices given".into()))?;
        Ok((Self::from_trainers(trainers, devices)?, state))
    }

    fn from_trainers(trainers: Vec<Trainer<B>>, devices: &[B::Device]) -> Result<Self, TrainError> {
        if devices.is_empty() {
            return Err(TrainError::InvalidConfig(
                "data parallelism needs at least one device".into(),
            ));
        }
        let group = GROUP
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        reset_collective::<B::InnerBackend>();
        let n = devices.len();
        let config = trainers[0].model.config().clone();
        let workers = trainers
            .into_iter()
            .zip(devices.iter().cloned())
            .enumerate()
            .map(|(rank, (trainer, device))| {
                let (commands, inbox) = channel::<Command>();
                let (outbox, replies) = channel::<Reply<B>>();
                let thread =
                    std::thread::spawn(move || worker(rank, n, device, trainer, inbox, outbox));
                Worker {
                    commands,
                    replies,
                    thread: Some(thread),
                }
            })
            .collect();
        Ok(Self {
            workers,
            config,
            _group: group,
        })
    }

    /// Number of replicas.
    pub fn replicas(&self) -> usize {
        self.workers.len()
    }

    /// A copy of the (identical) model of replica 0.
    pub fn model(&self) -> Result<InternLM2<B>, TrainError> {
        let w = &self.workers[0];
        w.commands.send(Command::Model).map_err(collective_err)?;
        match w.replies.recv().map_err(collective_err)? {
            Reply::Model(model) => Ok(*model),
            _ => Err(TrainError::Collective("unexpected reply".into())),
        }
    }

    fn broadcast_reply(&self) -> Result<Vec<Reply<B>>, TrainError> {
        self.workers
            .iter()
            .map(|w| w.replies.recv().map_err(collective_err))
            .collect()
    }
}

fn worker<B: AutodiffBackend + Kernels>(
    rank: usize,
    n: usize,
    device: B::Device,
    mut trainer: Trainer<B>,
    inbox: Receiver<Command>,
    outbox: Sender<Reply<B>>,
) where
    B::InnerBackend: Kernels,
{
    let peer = PeerId(rank as u32);
    let registered = register::<B::InnerBackend>(
        peer,
        device,
        CollectiveConfig::default().with_num_devices(n),
    )
    .map_err(|e| format!("{e:?}"));
    while let Ok(command) = inbox.recv() {
        let reply =
            match command {
                Command::Step {
                    shards,
                    lr,
                    normalizer,
                } => Reply::Step(registered.clone().map_err(TrainError::Collective).and_then(
                    |_| {
                        let (loss, grads) = trainer.gradients(&shards, normalizer)?;
                        let grads = grads
                            .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Sum)
                            .map_err(collective_err)?;
                        Ok((loss, trainer.apply(grads, lr)))
                    },
                )),
                Command::RopeTheta(theta) => {
                    trainer.model.config_mut().rope_theta = theta;
                    continue;
                }
                Command::Model => Reply::Model(Box::new(trainer.model.clone())),
                Command::Save {
                    dir,
                    state,
                    keep_last,
                } => Reply::Saved(trainer.save_checkpoint(&dir, &state, keep_last)),
                Command::Stop => break,
            };
        if outbox.send(reply).is_err() {
            break;
        }
    }
    let _ = finish_collective::<B::InnerBackend>(peer);
}

impl<B: AutodiffBackend + Kernels> StepEngine for DataParallel<B>
where
    B::InnerBackend: Kernels,
{
    fn step(&mut self, micro_batches: &[TokenBatch], lr: f64) -> Result<StepStats, TrainError> {
        let n = self.workers.len();
        let normalizer: usize = micro_batches.iter().map(TokenBatch::loss_tokens).sum();
        if normalizer == 0 {
            return Err(TrainError::NoLossTokens);
        }
        let mut shards: Vec<Vec<TokenBatch>> = vec![Vec::new(); n];
        for batch in micro_batches {
            if batch.batch % n != 0 {
                return Err(TrainError::InvalidConfig(format!(
                    "{} rows per micro-batch do not split over {n} replicas",
                    batch.batch
                )));
            }
            let rows = batch.batch / n;
            for (rank, shard) in shards.iter_mut().enumerate() {
                shard.push(slice_rows(batch, rank * rows, rows));
            }
        }
        for (worker, shards) in self.workers.iter().zip(shards) {
            worker
                .commands
                .send(Command::Step {
                    shards,
                    lr,
                    normalizer,
                })
                .map_err(collective_err)?;
        }
        let mut loss = 0.0;
        let mut grad_norm = 0.0;
        for reply in self.broadcast_reply()? {
            match reply {
                Reply::Step(result) => {
                    let (part, norm) = result?;
                    loss += part;
                    grad_norm = norm;
                }
                _ => return Err(TrainError::Collective("unexpected reply".into())),
            }
        }
        Ok(StepStats {
            loss,
            grad_norm,
            loss_tokens: normalizer,
            tokens: micro_batches.iter().map(|b| b.batch * b.seq_len).sum(),
        })
    }

    fn model_config(&self) -> InternLM2Config {
        self.config.clone()
    }

    fn set_rope_theta(&mut self, theta: f64) {
        self.config.rope_theta = theta;
        for worker in &self.workers {
            let _ = worker.commands.send(Command::RopeTheta(theta));
        }
    }

    fn save_checkpoint(
        &self,
        dir: &Path,
        state: &TrainState,
        keep_last: usize,
    ) -> Result<PathBuf, TrainError> {
        let w = &self.workers[0];
        w.commands
            .send(Command::Save {
                dir: dir.to_path_buf(),
                state: state.clone(),
                keep_last,
            })
            .map_err(collective_err)?;
        match w.replies.recv().map_err(collective_err)? {
            Reply::Saved(result) => result,
            _ => Err(TrainError::Collective("unexpected reply".into())),
        }
    }
}

impl<B: AutodiffBackend + Kernels> Drop for DataParallel<B>
where
    B::InnerBackend: Kernels,
{
    fn drop(&mut self) {
        for worker in &self.workers {
            let _ = worker.commands.send(Command::Stop);
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Rows `start..start + rows` of a batch.
fn slice_rows(batch: &TokenBatch, start: usize, rows: usize) -> TokenBatch {
    let l = batch.seq_len;
    let range = start * l..(start + rows) * l;
    TokenBatch {
        batch: rows,
        seq_len: l,
        inputs: batch.inputs[range.clone()].to_vec(),
        targets: batch.targets[range.clone()].to_vec(),
        loss_mask: batch.loss_mask[range.clone()].to_vec(),
        positions: batch.positions[range.clone()].to_vec(),
        segments: batch.segments.as_ref().map(|s| s[range].to_vec()),
    }
}
