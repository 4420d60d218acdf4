//! Data-parallel training across nodes through burn-collective's global orchestrator.
//!
//! A cluster run is one [`DataParallel`](crate::DataParallel) group per node (one replica per
//! local device) joined by burn-collective's global all-reduce: the local replicas' gradients
//! are summed on the node, then across nodes (ring all-reduce over burn-communication's
//! WebSocket tensor service), then handed back to every replica. One process serves the
//! orchestrator ([`serve_orchestrator`] or [`spawn_orchestrator`]); it only introduces the
//! nodes to each other, the tensors travel node to node.
//!
//! Every node feeds the same global batches (the data pipeline is deterministic) and trains
//! on its own rows of each: node `r` of `N` with `L` local devices owns replicas
//! `r * L .. (r + 1) * L` of the `N * L` equal row slices. So a cluster step is exactly the
//! one-device step over all rows, as on one node, and every node's data cursor, checkpoint
//! and resume point are the same.
//!
//! # What burn-collective 0.21 allows, and how a step works around it
//!
//! burn-collective 0.21.0 completes only **one** global all-reduce per registration: its
//! node-level sync (`global/node/sync.rs`) clears a copy of the list of peers that have
//! synced instead of the list itself, so the second `sync()` after a `register` waits forever.
//! `GradientsParams::all_reduce` issues one all-reduce per parameter and therefore hangs at the
//! second parameter across nodes. Parameter ids are also random per process, so they cannot
//! name a gradient on another node. Each cluster step therefore:
//!
//! 1. flattens every trainable gradient into one f32 vector in the module's visit order
//!    (identical on every node), followed by the replica's loss part and a node counter;
//! 2. registers with the orchestrator, runs the single global all-reduce (sum), and finishes
//!    (unregisters) at once;
//! 3. checks that the counter equals the number of nodes (a round that did not include every
//!    node is a typed error, never a silent divergence), unflattens and applies the step.
//!
//! The per-step registration costs one orchestrator round trip per step, negligible next to
//! a training step on real shapes.
//!
//! # Logs
//!
//! burn-communication installs a global INFO-level `tracing` subscriber when it starts its
//! first server (several lines per training step), unless the program installed one before.
//! This library never installs one: a program that wants quieter logs installs its own first,
//! as the `pretrain` and `orchestrator` examples do:
//!
//! ```ignore
//! let filter = tracing_subscriber::EnvFilter::try_from_default_env()
//!     .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
//! let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
//! ```

use std::net::TcpListener;

use burn::collective::{AllReduceStrategy, CollectiveConfig};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor};
use burn_collective::start_global_orchestrator;
use burn_communication::Address;

use crate::TrainError;

/// How this process joins a multi-node run.
///
/// ```
/// use internlm2_train::ClusterConfig;
///
/// let cluster = ClusterConfig::new(2, 1, "ws://10.0.0.1:3000", "ws://10.0.0.2:3001").unwrap();
/// assert_eq!(cluster.data_port(), 3001);
/// assert_eq!(cluster.orchestrator_port(), 3000);
/// assert!(ClusterConfig::new(2, 2, "ws://10.0.0.1:3000", "ws://10.0.0.2:3001").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    num_nodes: u32,
    node_rank: u32,
    orchestrator: String,
    orchestrator_port: u16,
    node_address: String,
    data_port: u16,
}

impl ClusterConfig {
    /// Node `node_rank` of `num_nodes`. `orchestrator` is the orchestrator's WebSocket URL
    /// (`ws://host:port`); `node_address` is this node's URL as the other nodes reach it, and
    /// its port is where this node serves its tensors.
    pub fn new(
        num_nodes: u32,
        node_rank: u32,
        orchestrator: &str,
        node_address: &str,
    ) -> Result<Self, TrainError> {
        if num_nodes == 0 {
            return Err(TrainError::invalid("a cluster needs at least one node"));
        }
        if node_rank >= num_nodes {
            return Err(TrainError::invalid(format!(
                "node rank {node_rank} is not below the node count {num_nodes}"
            )));
        }
        let orchestrator_port = ws_port(orchestrator)?;
        let data_port = ws_port(node_address)?;
        Ok(Self {
            num_nodes,
            node_rank,
            orchestrator: orchestrator.to_string(),
            orchestrator_port,
            node_address: node_address.to_string(),
            data_port,
        })
    }

    /// The cluster a node's command-line flags name (`--nodes N --node-rank R --orchestrator
    /// URL --node-address URL`): `None` for a run on one node without addresses; a typed error
    /// when several nodes are asked for without both addresses.
    ///
    /// ```
    /// use internlm2_train::ClusterConfig;
    /// assert!(ClusterConfig::from_flags(1, 0, None, None).unwrap().is_none());
    /// let node = ClusterConfig::from_flags(2, 1, Some("ws://a:3000"), Some("ws://b:3001"));
    /// assert_eq!(node.unwrap().unwrap().data_port(), 3001);
    /// assert!(ClusterConfig::from_flags(2, 0, Some("ws://a:3000"), None).is_err());
    /// ```
    pub fn from_flags(
        num_nodes: u32,
        node_rank: u32,
        orchestrator: Option<&str>,
        node_address: Option<&str>,
    ) -> Result<Option<Self>, TrainError> {
        match (orchestrator, node_address) {
            (None, None) if num_nodes <= 1 => Ok(None),
            (Some(orchestrator), Some(node)) => {
                Self::new(num_nodes, node_rank, orchestrator, node).map(Some)
            }
            _ => Err(TrainError::invalid(
                "a multi-node run needs both the orchestrator's and this node's address",
            )),
        }
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> u32 {
        self.num_nodes
    }

    /// This node's rank (`0..num_nodes`).
    pub fn node_rank(&self) -> u32 {
        self.node_rank
    }

    /// The orchestrator's port (where [`serve_orchestrator`] listens when this process hosts it).
    pub fn orchestrator_port(&self) -> u16 {
        self.orchestrator_port
    }

    /// The port this node serves its tensors on (the port of its address).
    pub fn data_port(&self) -> u16 {
        self.data_port
    }

    /// burn-collective's configuration for `local_devices` replicas on this node.
    pub(crate) fn collective_config(&self, local_devices: usize) -> CollectiveConfig {
        let address = |url: &str| {
            url.parse::<Address>()
                .expect("Address parsing is infallible")
        };
        CollectiveConfig::default()
            .with_num_devices(local_devices)
            .with_num_nodes(self.num_nodes)
            .with_global_address(address(&self.orchestrator))
            .with_node_address(address(&self.node_address))
            .with_data_service_port(self.data_port)
            .with_global_all_reduce_strategy(AllReduceStrategy::Ring)
    }
}

/// The port of a `ws://host:port` URL, or a typed error.
fn ws_port(url: &str) -> Result<u16, TrainError> {
    let bad = |why: &str| TrainError::invalid(format!("address {url:?}: {why}"));
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| bad("expected ws://host:port"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("no port (expected ws://host:port)"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| bad("the port is not a number in 1..=65535"))
}

fn check_port_free(port: u16) -> Result<(), TrainError> {
    TcpListener::bind(("0.0.0.0", port))
        .map(drop)
        .map_err(|source| {
            TrainError::invalid(format!(
                "cannot serve the orchestrator on port {port}: {source}"
            ))
        })
}

/// Serves burn-collective's global orchestrator on `port` (all interfaces) until the process
/// receives Ctrl-C / SIGTERM. Run it on one machine the nodes can reach, e.g. beside node 0.
pub fn serve_orchestrator(port: u16) -> Result<(), TrainError> {
    check_port_free(port)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TrainError::Collective {
            reason: format!("orchestrator runtime: {e}"),
        })?;
    runtime.block_on(start_global_orchestrator(port));
    Ok(())
}

/// [`serve_orchestrator`] on a background thread that lives as long as the process (node 0
/// can host the orchestrator itself). Fails at once when the port is taken.
pub fn spawn_orchestrator(port: u16) -> Result<(), TrainError> {
    check_port_free(port)?;
    std::thread::Builder::new()
        .name("collective-orchestrator".into())
        .spawn(move || {
            if let Err(e) = serve_orchestrator(port) {
                log::error!("orchestrator: {e}");
            }
        })
        .map_err(|e| TrainError::Collective {
            reason: format!("orchestrator thread: {e}"),
        })?;
    Ok(())
}

/// Gradients of the trainable float parameters of a module, one flat f32 vector in visit
/// order, followed by `extras`. A trainable parameter without a gradient contributes zeros, so
/// every node's vector has the same layout.
pub(crate) fn flatten_gradients<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
    extras: &[f32],
) -> Tensor<B::InnerBackend, 1> {
    struct Flatten<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        parts: Vec<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if !value.is_require_grad() {
                return;
            }
            let grad = self
                .grads
                .remove::<B::InnerBackend, D>(param.id)
                .unwrap_or_else(|| value.inner().zeros_like());
            let numel = grad.shape().num_elements();
            self.parts.push(grad.cast(DType::F32).reshape([numel]));
        }
    }
    let mut visitor = Flatten::<B> {
        grads,
        parts: Vec::new(),
    };
    module.visit(&mut visitor);
    let mut parts = visitor.parts;
    let device = parts
        .first()
        .map(|p| p.device())
        .unwrap_or_else(|| module.devices().into_iter().next().unwrap_or_default());
    parts.push(Tensor::from_floats(extras, &device));
    Tensor::cat(parts, 0)
}

/// The inverse of [`flatten_gradients`]: the gradients by parameter id (in each parameter's
/// dtype) and the `extras` values.
pub(crate) fn unflatten_gradients<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    flat: Tensor<B::InnerBackend, 1>,
    extras: usize,
) -> (GradientsParams, Vec<f32>) {
    struct Unflatten<B: AutodiffBackend> {
        flat: Tensor<B::InnerBackend, 1>,
        offset: usize,
        grads: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if !value.is_require_grad() {
                return;
            }
            let shape = value.shape();
            let numel = shape.num_elements();
            let grad = self
                .flat
                .clone()
                .slice(self.offset..self.offset + numel)
                .reshape(shape)
                .cast(value.dtype());
            self.offset += numel;
            self.grads.register::<B::InnerBackend, D>(param.id, grad);
        }
    }
    let total = flat.dims()[0];
    let mut visitor = Unflatten::<B> {
        flat,
        offset: 0,
        grads: GradientsParams::new(),
    };
    module.visit(&mut visitor);
    assert_eq!(
        visitor.offset + extras,
        total,
        "flat gradient layout does not match the module"
    );
    let tail = visitor
        .flat
        .slice(visitor.offset..total)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data");
    (visitor.grads, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        for bad in [
            "10.0.0.1:3000",
            "ws://10.0.0.1",
            "ws://:3000",
            "ws://h:0",
            "ws://h:70000",
            "ws://h:x",
        ] {
            let err = ClusterConfig::new(2, 0, bad, "ws://h:1").unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(ClusterConfig::new(0, 0, "ws://h:1", "ws://h:2").is_err());
        assert!(ClusterConfig::new(3, 3, "ws://h:1", "ws://h:2").is_err());
        let ok = ClusterConfig::new(3, 2, "ws://orch:1", "ws://n2:4567/").unwrap();
        assert_eq!(
            (ok.num_nodes(), ok.node_rank(), ok.data_port()),
            (3, 2, 4567)
        );
    }

    #[test]
    fn flattened_gradients_round_trip() {
        use crate::{OptimizerConfig, Trainer};
        use internlm2::backends::CpuAutodiff;
        use internlm2::data::{InMemoryDocuments, Packer, PackingConfig};
        use internlm2::{InternLM2, InternLM2Config};

        let device = Default::default();
        let config = InternLM2Config::new(64, 32, 64, 2, 4, 2).with_max_position_embeddings(64);
        let model = InternLM2::<CpuAutodiff>::init(&config, &device);
        let documents = (0..8).map(|d| (3..20 + d).collect()).collect();
        let mut packer = Packer::new(
            InMemoryDocuments::new(documents),
            PackingConfig {
                seq_len: 16,
                eos_id: 2,
                cross_document_attention: false,
            },
        );
        let batch = packer.next_batch(2);
        let trainer = Trainer::new(model, OptimizerConfig::new());
        let grads = trainer.gradients(&[batch.clone()], &10).unwrap().grads;
        let mut copy = trainer.gradients(&[batch], &10).unwrap().grads;
        let flat = flatten_gradients(&trainer.model, &mut copy, &[1.5, -2.0]);
        let params = trainer.model.num_params();
        assert_eq!(flat.dims()[0], params + 2);
        let (restored, extras) = unflatten_gradients(&trainer.model, flat, 2);
        assert_eq!(extras, vec![1.5, -2.0]);
        assert_eq!(restored.len(), grads.len());

        struct Compare<'a> {
            a: &'a GradientsParams,
            b: &'a GradientsParams,
            checked: usize,
        }
        impl ModuleVisitor<CpuAutodiff> for Compare<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<CpuAutodiff, D>>) {
                type Inner = <CpuAutodiff as AutodiffBackend>::InnerBackend;
                let a = self.a.get::<Inner, D>(param.id).expect("gradient");
                let b = self.b.get::<Inner, D>(param.id).expect("restored gradient");
                assert_eq!(a.into_data(), b.into_data());
                self.checked += 1;
            }
        }
        let mut compare = Compare {
            a: &grads,
            b: &restored,
            checked: 0,
        };
        trainer.model.visit(&mut compare);
        assert_eq!(compare.checked, grads.len());
    }

    #[test]
    fn orchestrator_port_in_use_is_a_typed_error() {
        let taken = TcpListener::bind(("0.0.0.0", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        assert!(matches!(
            spawn_orchestrator(port),
            Err(TrainError::InvalidConfig { reason }) if reason.contains(&port.to_string())
        ));
    }
}
