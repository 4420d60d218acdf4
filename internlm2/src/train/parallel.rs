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
//! Across nodes, burn-collective's global orchestrator joins one such group per node
//! ([`DataParallel::join`], [`super::cluster`]); see docs/training.md.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;

use burn::collective::{
    CollectiveConfig, PeerId, ReduceOperation, all_reduce, finish_collective, register,
    reset_collective,
};
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use internlm2_backends::Kernels;

use super::TrainError;
use super::cluster::{
    ClusterConfig, flatten_gradients, quiet_collective_logs, unflatten_gradients,
};
use super::data::TokenBatch;
use super::optim::OptimizerConfig;
use super::run::StepEngine;
use super::trainer::{StepStats, TrainState, Trainer, checkpoint_name};
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
    MixedPrecision(Option<DType>),
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
    cluster: Option<ClusterConfig>,
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
        Self::from_trainers(replicate(&model, &optimizer, devices), devices, None)
    }

    /// This node's share of a multi-node group: one replica of `model` per local device,
    /// joined to the other nodes through burn-collective's global orchestrator (see
    /// [`super::cluster`]). Every node must start from the same weights and be fed the same
    /// global batches; node `r` trains on its own rows of each.
    pub fn join(
        cluster: ClusterConfig,
        model: InternLM2<B>,
        optimizer: OptimizerConfig,
        devices: &[B::Device],
    ) -> Result<Self, TrainError> {
        Self::from_trainers(
            replicate(&model, &optimizer, devices),
            devices,
            Some(cluster),
        )
    }

    /// Replicas restored from one checkpoint (see [`Trainer::load_checkpoint`]); with a
    /// `cluster`, this node's share of a multi-node group as in [`DataParallel::join`].
    pub fn load_checkpoint(
        path: &Path,
        optimizer: OptimizerConfig,
        devices: &[B::Device],
        cluster: Option<ClusterConfig>,
    ) -> Result<(Self, TrainState), TrainError> {
        let mut state = None;
        let mut trainers = Vec::with_capacity(devices.len());
        for device in devices {
            let (trainer, s) = Trainer::load_checkpoint(path, optimizer.clone(), device)?;
            trainers.push(trainer);
            state = Some(s);
        }
        let state = state.ok_or_else(|| TrainError::InvalidConfig("no devices given".into()))?;
        Ok((Self::from_trainers(trainers, devices, cluster)?, state))
    }

    fn from_trainers(
        trainers: Vec<Trainer<B>>,
        devices: &[B::Device],
        cluster: Option<ClusterConfig>,
    ) -> Result<Self, TrainError> {
        if devices.is_empty() {
            return Err(TrainError::InvalidConfig(
                "data parallelism needs at least one device".into(),
            ));
        }
        if cluster.is_some() {
            quiet_collective_logs();
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
                let cluster = cluster.clone();
                let thread = std::thread::spawn(move || {
                    let peer = Peer {
                        rank,
                        local: n,
                        device,
                        cluster,
                    };
                    worker(peer, trainer, inbox, outbox)
                });
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
            cluster,
            _group: group,
        })
    }

    /// Every replica computes in `dtype` with f32 master weights (see
    /// [`Trainer::with_mixed_precision`]); `None` computes in the weights' dtype.
    pub fn with_mixed_precision(self, dtype: Option<DType>) -> Result<Self, TrainError> {
        for worker in &self.workers {
            worker
                .commands
                .send(Command::MixedPrecision(dtype))
                .map_err(collective_err)?;
        }
        Ok(self)
    }

    /// Number of replicas on this node.
    pub fn replicas(&self) -> usize {
        self.workers.len()
    }

    /// Number of replicas in the whole group (all nodes).
    pub fn world_size(&self) -> usize {
        self.workers.len() * self.cluster.as_ref().map_or(1, |c| c.num_nodes() as usize)
    }

    /// The cluster this group belongs to, if any.
    pub fn cluster(&self) -> Option<&ClusterConfig> {
        self.cluster.as_ref()
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

/// One trainer per device, each with a copy of `model` and fresh optimiser states.
fn replicate<B: AutodiffBackend + Kernels>(
    model: &InternLM2<B>,
    optimizer: &OptimizerConfig,
    devices: &[B::Device],
) -> Vec<Trainer<B>>
where
    B::InnerBackend: Kernels,
{
    devices
        .iter()
        .map(|device| Trainer::new(model.clone().fork(device), optimizer.clone()))
        .collect()
}

/// Where a replica thread sits in the group.
struct Peer<D> {
    /// Rank among this node's replicas.
    rank: usize,
    /// Number of replicas on this node.
    local: usize,
    device: D,
    cluster: Option<ClusterConfig>,
}

fn worker<B: AutodiffBackend + Kernels>(
    peer: Peer<B::Device>,
    mut trainer: Trainer<B>,
    inbox: Receiver<Command>,
    outbox: Sender<Reply<B>>,
) where
    B::InnerBackend: Kernels,
{
    let id = PeerId(peer.rank as u32);
    // On one node the replicas register once; across nodes every step registers (see
    // `cluster`: burn-collective 0.21 completes one global all-reduce per registration).
    let registered = match peer.cluster {
        None => register::<B::InnerBackend>(
            id,
            peer.device.clone(),
            CollectiveConfig::default().with_num_devices(peer.local),
        )
        .map_err(|e| format!("{e:?}")),
        Some(_) => Ok(()),
    };
    while let Ok(command) = inbox.recv() {
        let reply =
            match command {
                Command::Step {
                    shards,
                    lr,
                    normalizer,
                } => Reply::Step(registered.clone().map_err(TrainError::Collective).and_then(
                    |_| match &peer.cluster {
                        None => {
                            let (loss, grads) = trainer.gradients(&shards, normalizer)?;
                            let grads = grads
                                .all_reduce::<B::InnerBackend>(id, ReduceOperation::Sum)
                                .map_err(collective_err)?;
                            Ok((loss, trainer.apply(grads, lr)))
                        }
                        Some(cluster) => {
                            cluster_step(&peer, cluster, &mut trainer, &shards, normalizer, lr)
                        }
                    },
                )),
                Command::RopeTheta(theta) => {
                    trainer.model.config_mut().rope_theta = theta;
                    continue;
                }
                Command::MixedPrecision(dtype) => {
                    trainer = trainer.with_mixed_precision(dtype);
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
    if peer.cluster.is_none() {
        let _ = finish_collective::<B::InnerBackend>(id);
    }
}

/// One replica's share of a multi-node step: one flattened global all-reduce inside its own
/// registration. Returns the whole step's loss and the gradient norm.
fn cluster_step<B: AutodiffBackend + Kernels>(
    peer: &Peer<B::Device>,
    cluster: &ClusterConfig,
    trainer: &mut Trainer<B>,
    shards: &[TokenBatch],
    normalizer: usize,
    lr: f64,
) -> Result<(f64, f64), TrainError>
where
    B::InnerBackend: Kernels,
{
    let id = PeerId(peer.rank as u32);
    let (loss, mut grads) = trainer.gradients(shards, normalizer)?;
    // Extras: this replica's loss part, and 1 from one replica per node (the node count).
    let node_mark = if peer.rank == 0 { 1.0 } else { 0.0 };
    let flat = flatten_gradients(&trainer.model, &mut grads, &[loss as f32, node_mark]);
    register::<B::InnerBackend>(
        id,
        peer.device.clone(),
        cluster.collective_config(peer.local),
    )
    .map_err(collective_err)?;
    let reduced =
        all_reduce::<B::InnerBackend>(id, flat.into_primitive().tensor(), ReduceOperation::Sum);
    let finished = finish_collective::<B::InnerBackend>(id);
    let reduced = reduced.map_err(collective_err)?;
    finished.map_err(collective_err)?;
    let flat = Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(reduced));
    let (grads, extras) = unflatten_gradients(&trainer.model, flat, 2);
    let nodes = extras[1].round() as i64;
    if nodes != i64::from(cluster.num_nodes()) {
        return Err(TrainError::Collective(format!(
            "{nodes} nodes took part in the all-reduce, expected {} (a node re-registered \
             before another finished the previous step; restart from the last checkpoint)",
            cluster.num_nodes()
        )));
    }
    Ok((f64::from(extras[0]), trainer.apply(grads, lr)))
}

impl<B: AutodiffBackend + Kernels> StepEngine for DataParallel<B>
where
    B::InnerBackend: Kernels,
{
    fn step(&mut self, micro_batches: &[TokenBatch], lr: f64) -> Result<StepStats, TrainError> {
        let n = self.workers.len();
        let world = self.world_size();
        // This node's replicas are `first..first + n` of the group's `world`.
        let first = self.cluster.as_ref().map_or(0, |c| c.node_rank() as usize) * n;
        let normalizer: usize = micro_batches.iter().map(TokenBatch::loss_tokens).sum();
        if normalizer == 0 {
            return Err(TrainError::NoLossTokens);
        }
        let mut shards: Vec<Vec<TokenBatch>> = vec![Vec::new(); n];
        for batch in micro_batches {
            if batch.batch % world != 0 {
                return Err(TrainError::InvalidConfig(format!(
                    "{} rows per micro-batch do not split over {world} replicas",
                    batch.batch
                )));
            }
            let rows = batch.batch / world;
            for (rank, shard) in shards.iter_mut().enumerate() {
                shard.push(slice_rows(batch, (first + rank) * rows, rows));
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
                    // Across nodes every replica already returns the whole step's loss.
                    loss = if self.cluster.is_some() {
                        part
                    } else {
                        loss + part
                    };
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
        // Across nodes the replicas are identical everywhere: node 0 writes, on a filesystem
        // every node reads when it resumes.
        if self.cluster.as_ref().is_some_and(|c| c.node_rank() != 0) {
            return Ok(dir.join(checkpoint_name(state.step)));
        }
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
