//! The reward model: the InternLM2 body with a 1-dimensional head `v_head` read at the reward
//! token, in the official InternLM2-Reward checkpoint layout (`model.*` plus `v_head.weight`
//! `[1, H]`).

use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Int, Tensor, TensorData};
use internlm2::backends::Kernels;
use internlm2::checkpoint::{
    SaveOptions, WeightReader, backbone_tensors, reject_leftovers, torch_dtype, write_checkpoint,
};
use internlm2::model::linear::Linear;
use internlm2::model::{ForwardInput, INIT_STD, InternLM2, InternLM2Model};
use internlm2::{CheckpointError, InternLM2Config};
use internlm2_train::{TrainBackend, TrainModel};

/// The reward token of the released vocabulary (`[UNUSED_TOKEN_130]`).
pub const RELEASED_REWARD_TOKEN: u32 = 92_527;

/// InternLM2 body + scalar head.
#[derive(Module, Debug)]
pub struct RewardModel<B: Kernels> {
    /// `model.*`.
    pub model: InternLM2Model<B>,
    /// `v_head`, `[1, hidden]`, no bias.
    pub v_head: Linear<B>,
}

impl<B: Kernels> RewardModel<B> {
    /// A reward model initialised from a (SFT) language model: its LM head is replaced by a
    /// freshly initialised `v_head` (SPEC 6).
    pub fn from_language_model(lm: InternLM2<B>) -> Self {
        let device = lm.device();
        let (h, dtype) = (lm.config().hidden_size, lm.dtype());
        Self {
            model: lm.model,
            v_head: Linear::random(h, 1, false, INIT_STD, dtype, &device),
        }
    }

    /// Random weights.
    pub fn init(config: &InternLM2Config, device: &B::Device) -> Self {
        Self::from_language_model(InternLM2::init(config, device))
    }

    /// Loads an InternLM2-Reward HuggingFace directory (`config.json`, `model.*`, `v_head.weight`).
    pub fn load(
        dir: impl AsRef<Path>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        let dir = dir.as_ref();
        let config = InternLM2Config::from_hf_file(dir.join("config.json"))?;
        let mut reader = WeightReader::open(dir)?;
        let model = InternLM2Model::from_reader(&config, &mut reader, dtype, device)?;
        let head = reader.take_tensor("v_head.weight", [1, config.hidden_size], dtype, device)?;
        reject_leftovers(&reader)?;
        Ok(Self {
            model,
            v_head: Linear::from_tensors(head, None),
        })
    }

    /// Saves in the InternLM2-Reward layout.
    pub fn save(
        &self,
        dir: impl AsRef<Path>,
        options: &SaveOptions,
    ) -> Result<(), CheckpointError> {
        let mut config: serde_json::Value =
            serde_json::from_str(&self.model.config.to_hf_json(torch_dtype(options.dtype)))
                .expect("valid JSON");
        config["architectures"] = serde_json::json!(["InternLM2ForRewardModel"]);
        config["auto_map"]["AutoModel"] =
            serde_json::json!("modeling_internlm2.InternLM2ForRewardModel");
        let mut tensors = backbone_tensors(&self.model);
        tensors.push((
            "v_head.weight".to_string(),
            self.v_head.weight.val().into_data(),
        ));
        write_checkpoint(
            dir.as_ref(),
            &serde_json::to_string_pretty(&config).expect("JSON"),
            tensors,
            options,
        )
    }

    /// Scores of right-padded sequences read at `last[b]` (the reward token of row `b`).
    ///
    /// # Shapes
    /// `ids`: `[batch, seq]` -> `[batch]` in f32
    pub fn scores(&self, ids: Tensor<B, 2, Int>, last: &[usize]) -> Tensor<B, 1> {
        let [b, _] = ids.dims();
        let hidden = self.model.forward(ForwardInput::new(ids), None); // [b, s, h]
        let h = hidden.dims()[2];
        let device = hidden.device();
        let index: Vec<i64> = last
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p as i64, h))
            .collect();
        let index = Tensor::<B, 3, Int>::from_data(TensorData::new(index, [b, 1, h]), &device);
        let at_token = hidden.gather(1, index); // [b, 1, h]
        self.v_head.forward(at_token).reshape([b]).cast(DType::F32)
    }
}

impl<B: TrainBackend> TrainModel<B> for RewardModel<B> {
    fn config(&self) -> &InternLM2Config {
        &self.model.config
    }

    fn config_mut(&mut self) -> &mut InternLM2Config {
        &mut self.model.config
    }

    fn init(config: &InternLM2Config, device: &B::Device) -> Self {
        RewardModel::init(config, device)
    }

    fn dtype(&self) -> DType {
        self.model.dtype()
    }
}
