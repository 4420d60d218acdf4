//! Data-parallel training across the devices of one node on burn's own collective machinery.
//!
//! One thread and one replica per device. A replica is a [`Trainer`] of any objective, or
//! several trainers that step in turn (PPO's actor and critic, see [`Replica`]). Each step's
//! rows are split evenly across the replicas; every replica computes its gradients with the
//! loss normalised by the whole step's totals, burn-collective sums the gradients across
//! replicas (all-reduce), and every replica applies the same clipped AdamW step, so the
//! replicas stay identical and the step equals one replica's step over all the rows (tested on
//! two CPU replicas for language modelling, the reward model, DPO and PPO).
//!
//! burn-collective keeps one local server per backend type in the process, so one
//! `DataParallel` group runs at a time (a second one waits for the first to be dropped); put
//! models that train together into one replica instead. Across nodes, burn-collective's global
//! orchestrator joins one such group per node ([`DataParallel::join`], [`crate::cluster`]);
//! see docs/training.md.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;

use burn::collective::{
    CollectiveConfig, PeerId, ReduceOperation, all_reduce, finish_collective, register,
    reset_collective,
};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use internlm2::{InternLM2, InternLM2Config};

use crate::TrainError;
use crate::checkpoint::{TrainState, checkpoint_name};
use crate::cluster::{ClusterConfig, flatten_gradients, unflatten_gradients};
use crate::objective::{Batch, Metrics, Objective, TrainBackend, TrainModel, step_totals};
use crate::optim::OptimizerConfig;
use crate::run::StepEngine;
use crate::trainer::{StepStats, Trainer};

/// One data-parallel group per process at a time.
static GROUP: Mutex<()> = Mutex::new(());

/// What one device of a group holds: copied onto every device when the group starts.
pub trait Replica<B: TrainBackend>: Send + 'static {
    /// A copy on `device`: the same weights (parameter ids included) and optimiser moments.
    fn fork(&self, device: &B::Device) -> Self;
}

impl<B: TrainBackend, O: Objective<B>> Replica<B> for Trainer<B, O> {
    fn fork(&self, device: &B::Device) -> Self {
        Trainer::fork(self, device)
    }
}

type Reply = Box<dyn Any + Send>;
type Job<R, D> = Box<dyn FnOnce(&mut R, &Peer<D>) -> Reply + Send>;

enum Command<R, D> {
    Run(Job<R, D>),
    Stop,
}

struct Worker<R, D> {
    commands: Sender<Command<R, D>>,
    replies: Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
}

/// Replicas of a [`Trainer`] (or of a [`Replica`] holding several) on several devices,
/// stepping together.
pub struct DataParallel<B: TrainBackend, R: Replica<B> = Trainer<B>> {
    workers: Vec<Worker<R, B::Device>>,
    config: InternLM2Config,
    cluster: Option<ClusterConfig>,
    _group: MutexGuard<'static, ()>,
}

fn collective_err(e: impl std::fmt::Debug) -> TrainError {
    TrainError::Collective {
        reason: format!("{e:?}"),
    }
}

fn gone() -> TrainError {
    TrainError::Collective {
        reason: "a replica thread is gone".into(),
    }
}

impl<B: TrainBackend> DataParallel<B> {
    /// One language-model replica of `model` per device, fresh optimiser states.
    pub fn new(
        model: InternLM2<B>,
        optimizer: OptimizerConfig,
        devices: &[B::Device],
    ) -> Result<Self, TrainError> {
        let config = model.config().clone();
        Self::from_replica(Trainer::new(model, optimizer), config, devices, None)
    }

    /// This node's share of a multi-node group: one replica of `model` per local device,
    /// joined to the other nodes through burn-collective's global orchestrator (see
    /// [`crate::cluster`]). Every node must start from the same weights and be fed the same
    /// global batches; node `r` trains on its own rows of each.
    pub fn join(
        cluster: ClusterConfig,
        model: InternLM2<B>,
        optimizer: OptimizerConfig,
        devices: &[B::Device],
    ) -> Result<Self, TrainError> {
        let config = model.config().clone();
        Self::from_replica(
            Trainer::new(model, optimizer),
            config,
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
        let device = devices.first().ok_or_else(|| TrainError::InvalidConfig {
            reason: "no devices given".into(),
        })?;
        let (trainer, state) = Trainer::load_checkpoint(path, optimizer, device)?;
        let config = trainer.model.config().clone();
        Ok((
            Self::from_replica(trainer, config, devices, cluster)?,
            state,
        ))
    }
}

impl<B: TrainBackend, R: Replica<B>> DataParallel<B, R> {
    /// A group of copies of `replica`, one per device (see [`Replica::fork`]); `config` is the
    /// trained model's configuration. With a `cluster`, this node's share of a multi-node
    /// group.
    pub fn from_replica(
        replica: R,
        config: InternLM2Config,
        devices: &[B::Device],
        cluster: Option<ClusterConfig>,
    ) -> Result<Self, TrainError> {
        if devices.is_empty() {
            return Err(TrainError::InvalidConfig {
                reason: "data parallelism needs at least one device".into(),
            });
        }
        let replicas: Vec<R> = devices.iter().map(|d| replica.fork(d)).collect();
        drop(replica);
        let group = GROUP
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        reset_collective::<B::InnerBackend>();
        let n = devices.len();
        let workers = replicas
            .into_iter()
            .zip(devices.iter().cloned())
            .enumerate()
            .map(|(rank, (replica, device))| {
                let (commands, inbox) = channel::<Command<R, B::Device>>();
                let (outbox, replies) = channel::<Reply>();
                let cluster = cluster.clone();
                let thread = std::thread::spawn(move || {
                    let peer = Peer {
                        rank,
                        local: n,
                        device,
                        cluster,
                        registered: Ok(()),
                    };
                    worker::<B, R>(peer, replica, inbox, outbox)
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

    /// Runs `job` on every replica (in its thread); returns the results in replica order.
    pub fn on_every<T: Send + 'static>(
        &self,
        job: impl Fn(&mut R) -> T + Clone + Send + 'static,
    ) -> Result<Vec<T>, TrainError> {
        let jobs = self.workers.iter().map(|_| {
            let job = job.clone();
            move |replica: &mut R, _: &Peer<B::Device>| job(replica)
        });
        self.run_jobs(jobs.collect())
    }

    /// Runs `job` on replica 0 (the replicas are identical) and returns its result.
    pub fn on_first<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut R) -> T + Send + 'static,
    ) -> Result<T, TrainError> {
        let worker = &self.workers[0];
        let job: Job<R, B::Device> = Box::new(move |replica, _| Box::new(job(replica)));
        worker
            .commands
            .send(Command::Run(job))
            .map_err(|_| gone())?;
        let reply = worker.replies.recv().map_err(|_| gone())?;
        Ok(*reply.downcast::<T>().expect("the job's reply type"))
    }

    fn run_jobs<T: Send + 'static, J>(&self, jobs: Vec<J>) -> Result<Vec<T>, TrainError>
    where
        J: FnOnce(&mut R, &Peer<B::Device>) -> T + Send + 'static,
    {
        for (worker, job) in self.workers.iter().zip(jobs) {
            let job: Job<R, B::Device> =
                Box::new(move |replica, peer| Box::new(job(replica, peer)));
            worker
                .commands
                .send(Command::Run(job))
                .map_err(|_| gone())?;
        }
        self.workers
            .iter()
            .map(|w| {
                let reply = w.replies.recv().map_err(|_| gone())?;
                Ok(*reply.downcast::<T>().expect("the job's reply type"))
            })
            .collect()
    }

    /// One data-parallel step of the trainer `part` selects in every replica: the rows of
    /// each micro-batch are split evenly over the group (a count that does not split is
    /// [`TrainError::InvalidConfig`]), the loss is normalised by the whole step's totals and
    /// the gradients are summed across replicas before every replica applies them.
    pub fn step_with<O: Objective<B>>(
        &mut self,
        part: fn(&mut R) -> &mut Trainer<B, O>,
        objective: &O,
        micro_batches: &[O::Batch],
        lr: f64,
    ) -> Result<StepStats<O::Metrics>, TrainError> {
        let n = self.workers.len();
        let world = self.world_size();
        // This node's replicas are `first..first + n` of the group's `world`.
        let first = self.cluster.as_ref().map_or(0, |c| c.node_rank() as usize) * n;
        let totals = step_totals(objective, micro_batches);
        let mut shards: Vec<Vec<O::Batch>> = vec![Vec::new(); n];
        for batch in micro_batches {
            if batch.rows() % world != 0 {
                return Err(TrainError::InvalidConfig {
                    reason: format!(
                        "{} rows per micro-batch do not split over {world} replicas",
                        batch.rows()
                    ),
                });
            }
            let rows = batch.rows() / world;
            for (rank, shard) in shards.iter_mut().enumerate() {
                shard.push(batch.slice_rows((first + rank) * rows, rows));
            }
        }
        let jobs = shards.into_iter().map(|shards| {
            move |replica: &mut R, peer: &Peer<B::Device>| {
                replica_step(peer, part(replica), &shards, &totals, lr)
            }
        });
        let mut loss = 0.0;
        let mut grad_norm = 0.0;
        let mut metrics = O::Metrics::default();
        for result in self.run_jobs(jobs.collect())? {
            let done = result?;
            // Across nodes every replica already returns the whole step's loss.
            loss = if self.cluster.is_some() {
                done.loss
            } else {
                loss + done.loss
            };
            grad_norm = done.grad_norm;
            metrics.merge(done.metrics);
        }
        Ok(StepStats {
            loss,
            grad_norm,
            tokens: micro_batches.iter().map(Batch::tokens).sum(),
            metrics,
        })
    }

    /// Writes a checkpoint of replica 0 with `save` (node 0 only: across nodes the replicas
    /// are identical everywhere, and node 0 writes on a filesystem every node reads when it
    /// resumes).
    pub fn save_with(
        &self,
        dir: &Path,
        state: &TrainState,
        keep_last: usize,
        save: fn(&R, &Path, &TrainState, usize) -> Result<PathBuf, TrainError>,
    ) -> Result<PathBuf, TrainError> {
        if self.cluster.as_ref().is_some_and(|c| c.node_rank() != 0) {
            return Ok(dir.join(checkpoint_name(state.step)));
        }
        let (dir, state) = (dir.to_path_buf(), state.clone());
        self.on_first(move |replica| save(replica, &dir, &state, keep_last))?
    }
}

impl<B: TrainBackend, O: Objective<B>> DataParallel<B, Trainer<B, O>> {
    /// Every replica computes in `dtype` with f32 master weights (see
    /// [`Trainer::with_mixed_precision`]); `None` computes in the weights' dtype.
    pub fn with_mixed_precision(self, dtype: Option<DType>) -> Result<Self, TrainError> {
        self.on_every(move |trainer: &mut Trainer<B, O>| trainer.set_mixed_precision(dtype))?;
        Ok(self)
    }

    /// A copy of the (identical) model of replica 0.
    pub fn model(&self) -> Result<O::Model, TrainError> {
        self.on_first(|trainer: &mut Trainer<B, O>| trainer.model.clone())
    }
}

/// What one replica's share of a step returns.
struct ReplicaStep<M> {
    loss: f64,
    grad_norm: f64,
    metrics: M,
}

/// Where a replica thread sits in the group.
struct Peer<D> {
    /// Rank among this node's replicas.
    rank: usize,
    /// Number of replicas on this node.
    local: usize,
    device: D,
    cluster: Option<ClusterConfig>,
    /// On one node: whether the replica registered with the collective.
    registered: Result<(), String>,
}

fn worker<B: TrainBackend, R: Replica<B>>(
    mut peer: Peer<B::Device>,
    mut replica: R,
    inbox: Receiver<Command<R, B::Device>>,
    outbox: Sender<Reply>,
) {
    let id = PeerId(peer.rank as u32);
    // On one node the replicas register once; across nodes every step registers (see
    // `cluster`: burn-collective 0.21 completes one global all-reduce per registration).
    if peer.cluster.is_none() {
        peer.registered = register::<B::InnerBackend>(
            id,
            peer.device.clone(),
            CollectiveConfig::default().with_num_devices(peer.local),
        )
        .map_err(|e| format!("{e:?}"));
    }
    while let Ok(command) = inbox.recv() {
        match command {
            Command::Run(job) => {
                if outbox.send(job(&mut replica, &peer)).is_err() {
                    break;
                }
            }
            Command::Stop => break,
        }
    }
    if peer.cluster.is_none() {
        let _ = finish_collective::<B::InnerBackend>(id);
    }
}

/// One replica's share of a data-parallel step: its gradients, summed over the group, applied.
fn replica_step<B: TrainBackend, O: Objective<B>>(
    peer: &Peer<B::Device>,
    trainer: &mut Trainer<B, O>,
    shards: &[O::Batch],
    totals: &O::Totals,
    lr: f64,
) -> Result<ReplicaStep<O::Metrics>, TrainError> {
    let id = PeerId(peer.rank as u32);
    let gradients = trainer.gradients(shards, totals)?;
    match &peer.cluster {
        None => {
            peer.registered
                .clone()
                .map_err(|reason| TrainError::Collective { reason })?;
            let grads = gradients
                .grads
                .all_reduce::<B::InnerBackend>(id, ReduceOperation::Sum)
                .map_err(collective_err)?;
            Ok(ReplicaStep {
                loss: gradients.loss,
                grad_norm: trainer.apply(grads, lr),
                metrics: gradients.metrics,
            })
        }
        Some(cluster) => {
            let (loss, grads) = cluster_reduce(
                peer,
                cluster,
                &trainer.model,
                gradients.grads,
                gradients.loss,
            )?;
            Ok(ReplicaStep {
                loss,
                grad_norm: trainer.apply(grads, lr),
                metrics: gradients.metrics,
            })
        }
    }
}

/// One replica's share of a multi-node step: one flattened global all-reduce inside its own
/// registration. Returns the whole step's loss and the summed gradients.
fn cluster_reduce<B: TrainBackend, M: TrainModel<B>>(
    peer: &Peer<B::Device>,
    cluster: &ClusterConfig,
    model: &M,
    mut grads: GradientsParams,
    loss: f64,
) -> Result<(f64, GradientsParams), TrainError> {
    let id = PeerId(peer.rank as u32);
    // Extras: this replica's loss part, and 1 from one replica per node (the node count).
    let node_mark = if peer.rank == 0 { 1.0 } else { 0.0 };
    let flat = flatten_gradients(model, &mut grads, &[loss as f32, node_mark]);
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
    let (grads, extras) = unflatten_gradients(model, flat, 2);
    let nodes = extras[1].round() as i64;
    if nodes != i64::from(cluster.num_nodes()) {
        return Err(TrainError::Collective {
            reason: format!(
                "{nodes} nodes took part in the all-reduce, expected {} (a node re-registered \
                 before another finished the previous step; restart from the last checkpoint)",
                cluster.num_nodes()
            ),
        });
    }
    Ok((f64::from(extras[0]), grads))
}

impl<B: TrainBackend, O: Objective<B>> StepEngine<B, O> for DataParallel<B, Trainer<B, O>> {
    fn step(
        &mut self,
        micro_batches: &[O::Batch],
        lr: f64,
    ) -> Result<StepStats<O::Metrics>, TrainError> {
        let objective = self.on_first(|t: &mut Trainer<B, O>| t.objective().clone())?;
        self.step_with(|t| t, &objective, micro_batches, lr)
    }

    fn model_config(&self) -> InternLM2Config {
        self.config.clone()
    }

    fn set_rope_theta(&mut self, theta: f64) {
        self.config.rope_theta = theta;
        let _ = self.on_every(move |t: &mut Trainer<B, O>| {
            t.model.config_mut().rope_theta = theta;
        });
    }

    fn save_checkpoint(
        &self,
        dir: &Path,
        state: &TrainState,
        keep_last: usize,
    ) -> Result<PathBuf, TrainError> {
        self.save_with(dir, state, keep_last, |t, dir, state, keep| {
            t.save_checkpoint(dir, state, keep)
        })
    }

    fn model(&self) -> Result<O::Model, TrainError> {
        DataParallel::model(self)
    }
}

impl<B: TrainBackend, R: Replica<B>> Drop for DataParallel<B, R> {
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
