//! Loading a model with packed weights: [`LoadOptions`], [`InternLM2::load_with`], in-memory
//! [`InternLM2::quantize`], and the one model assembly every packed loader (quantize on load,
//! our quantized checkpoints, GGUF, AWQ) goes through ([`WeightSource`], [`assemble`]).

use std::path::Path;

use burn::tensor::{DType, Tensor};
use internlm2_backends::Kernels;
use internlm2_backends::packed::{PackedWeight, WeightFormat};

use super::{QuantConfig, QuantError, pack, save};
use crate::checkpoint::{WeightReader, reject_leftovers};
use crate::config::InternLM2Config;
use crate::error::CheckpointError;
use crate::model::attention::Attention;
use crate::model::decoder::DecoderLayer;
use crate::model::embedding::Embedding;
use crate::model::feed_forward::FeedForward;
use crate::model::linear::Linear;
use crate::model::norm::RmsNorm;
use crate::model::{InternLM2, InternLM2Model};

/// How [`InternLM2::load_with`] loads a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Dtype of the dense weights and of the activations (f32 on the CPU's fused kernels).
    pub dtype: DType,
    /// Which parts to pack while loading an HF checkpoint (ignored for files that are
    /// already packed: GGUF, AWQ, our quantized checkpoints).
    pub quant: QuantConfig,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            quant: QuantConfig::dense(),
        }
    }
}

impl LoadOptions {
    /// Dense weights in `dtype`.
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            ..Self::default()
        }
    }

    /// Packs the weights as `quant` says while loading.
    pub fn with_quant(mut self, quant: QuantConfig) -> Self {
        self.quant = quant;
        self
    }
}

/// Which part of the model a weight belongs to (each gets its format from [`QuantConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// `wqkv`, `wo`, `w1`, `w2`, `w3`.
    Body,
    /// `tok_embeddings`.
    Embedding,
    /// `output`.
    Head,
}

impl QuantConfig {
    pub(crate) fn format_of(&self, part: Part) -> Option<WeightFormat> {
        match part {
            Part::Body => self.body,
            Part::Embedding => self.embedding,
            Part::Head => self.head,
        }
    }
}

/// Where [`assemble`] gets the weights of a model, by HuggingFace name.
pub(crate) trait WeightSource<B: Kernels> {
    /// The linear layer `{prefix}.weight` (`[rows, cols]`) and, with `bias`, `{prefix}.bias`.
    fn linear(
        &mut self,
        prefix: &str,
        shape: [usize; 2],
        bias: bool,
        part: Part,
    ) -> Result<Linear<B>, CheckpointError>;
    /// The embedding table `name` (`[vocab, hidden]`).
    fn embedding(&mut self, name: &str, shape: [usize; 2])
    -> Result<Embedding<B>, CheckpointError>;
    /// A 1-D tensor (norm weights).
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>, CheckpointError>;
    /// Drops `name` if the source has it (a tied checkpoint's redundant head).
    fn skip(&mut self, name: &str);
}

/// Builds an [`InternLM2`] from `source`, tensor by tensor, in checkpoint order.
pub(crate) fn assemble<B: Kernels>(
    config: &InternLM2Config,
    source: &mut impl WeightSource<B>,
) -> Result<InternLM2<B>, CheckpointError> {
    config.validate()?;
    let (h, v, i) = (
        config.hidden_size,
        config.vocab_size,
        config.intermediate_size,
    );
    let q_width = config.num_attention_heads * config.head_dim();
    let eps = config.rms_norm_eps;
    let tok_embeddings = source.embedding("model.tok_embeddings.weight", [v, h])?;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let attention_norm = RmsNorm::from_tensor(
            source.vector(&format!("{p}.attention_norm.weight"), h)?,
            eps,
        );
        let wqkv = source.linear(
            &format!("{p}.attention.wqkv"),
            [config.wqkv_rows(), h],
            config.bias,
            Part::Body,
        )?;
        let wo = source.linear(
            &format!("{p}.attention.wo"),
            [h, q_width],
            config.bias,
            Part::Body,
        )?;
        let ffn_norm =
            RmsNorm::from_tensor(source.vector(&format!("{p}.ffn_norm.weight"), h)?, eps);
        let w1 = source.linear(&format!("{p}.feed_forward.w1"), [i, h], false, Part::Body)?;
        let w3 = source.linear(&format!("{p}.feed_forward.w3"), [i, h], false, Part::Body)?;
        let w2 = source.linear(&format!("{p}.feed_forward.w2"), [h, i], false, Part::Body)?;
        layers.push(DecoderLayer {
            attention_norm,
            attention: Attention::from_linears(config, wqkv, wo),
            ffn_norm,
            feed_forward: FeedForward { w1, w2, w3 },
        });
    }
    let norm = RmsNorm::from_tensor(source.vector("model.norm.weight", h)?, eps);
    let output = if config.tie_word_embeddings {
        source.skip("output.weight");
        None
    } else {
        Some(source.linear("output", [v, h], false, Part::Head)?)
    };
    Ok(InternLM2 {
        model: InternLM2Model {
            tok_embeddings,
            layers,
            norm,
            config: config.clone(),
        },
        output,
    })
}

fn quant_err(name: &str, path: &Path, e: QuantError) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("tensor `{name}`: {e}"),
    }
}

/// An HF directory, packed on the fly as `quant` says ("quantize on load"): one tensor is
/// read and converted at a time.
pub(crate) struct HfSource<'a, B: Kernels> {
    pub reader: &'a mut WeightReader,
    pub quant: QuantConfig,
    pub dtype: DType,
    pub device: B::Device,
}

impl<B: Kernels> HfSource<'_, B> {
    fn packed(
        &mut self,
        name: &str,
        [rows, cols]: [usize; 2],
        format: WeightFormat,
    ) -> Result<PackedWeight, CheckpointError> {
        let path = self.reader.file_of(name);
        let values = self
            .reader
            .take(name, &[rows, cols], DType::F32)?
            .into_vec::<f32>()
            .map_err(|e| CheckpointError::Corrupt {
                path: path.clone(),
                reason: format!("tensor `{name}`: {e:?}"),
            })?;
        pack(&values, rows, cols, format).map_err(|e| quant_err(name, &path, e))
    }
}

impl<B: Kernels> WeightSource<B> for HfSource<'_, B> {
    fn linear(
        &mut self,
        prefix: &str,
        shape: [usize; 2],
        bias: bool,
        part: Part,
    ) -> Result<Linear<B>, CheckpointError> {
        let name = format!("{prefix}.weight");
        let bias_dtype = if self.quant.format_of(part).is_some() {
            DType::F32
        } else {
            self.dtype
        };
        let bias = if bias {
            Some(self.reader.take_tensor(
                &format!("{prefix}.bias"),
                [shape[0]],
                bias_dtype,
                &self.device,
            )?)
        } else {
            None
        };
        match self.quant.format_of(part) {
            Some(format) => Ok(Linear::from_packed(
                self.packed(&name, shape, format)?,
                bias,
                &self.device,
            )),
            None => Ok(Linear::from_tensors(
                self.reader
                    .take_tensor(&name, shape, self.dtype, &self.device)?,
                bias,
            )),
        }
    }

    fn embedding(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Embedding<B>, CheckpointError> {
        match self.quant.format_of(Part::Embedding) {
            Some(format) => Ok(Embedding::from_packed(
                self.packed(name, shape, format)?,
                self.dtype,
                &self.device,
            )),
            None => Ok(Embedding::from_tensor(self.reader.take_tensor(
                name,
                shape,
                self.dtype,
                &self.device,
            )?)),
        }
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>, CheckpointError> {
        self.reader
            .take_tensor(name, [len], self.dtype, &self.device)
    }

    fn skip(&mut self, name: &str) {
        self.reader.skip(name);
    }
}

/// What `config.json`'s `quantization_config` says the directory holds.
pub(crate) enum StoredQuant {
    /// Plain HF weights.
    None,
    /// Our packed layout ([`save::QUANT_METHOD`]).
    Ours(serde_json::Value),
    /// LMDeploy/AutoAWQ W4A16.
    Awq(serde_json::Value),
}

pub(crate) fn stored_quant(dir: &Path) -> Result<StoredQuant, CheckpointError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io {
        path: path.clone(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
            path: path.clone(),
            reason: format!("config.json: {e}"),
        })?;
    let Some(q) = json.get("quantization_config") else {
        return Ok(StoredQuant::None);
    };
    match q.get("quant_method").and_then(|m| m.as_str()) {
        Some(save::QUANT_METHOD) => Ok(StoredQuant::Ours(q.clone())),
        Some(m) if m.eq_ignore_ascii_case("awq") => Ok(StoredQuant::Awq(q.clone())),
        other => Err(CheckpointError::Unsupported {
            path,
            reason: format!(
                "quantization_config.quant_method {other:?} is not supported (supported: `{}`, `awq`)",
                save::QUANT_METHOD
            ),
        }),
    }
}

impl<B: Kernels> InternLM2<B> {
    /// Loads a model with the given options: a HuggingFace directory (packed on load as
    /// `options.quant` says), a directory written by [`save_quantized`](super::save_quantized)
    /// or an AWQ checkpoint (used as stored), or a `.gguf` file (see
    /// [`crate::checkpoint::gguf`]).
    ///
    /// ```no_run
    /// use burn::tensor::DType;
    /// use internlm2::InternLM2;
    /// use internlm2::quant::{LoadOptions, QuantConfig, WeightFormat};
    /// use internlm2_backends::Cpu;
    /// let options = LoadOptions::new(DType::F32).with_quant(QuantConfig::new(WeightFormat::Q4K));
    /// let model = InternLM2::<Cpu>::load_with("internlm2-chat-1_8b", &options, &Default::default())?;
    /// # Ok::<(), internlm2::CheckpointError>(())
    /// ```
    pub fn load_with(
        dir: impl AsRef<Path>,
        options: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        let dir = dir.as_ref();
        if dir.is_file()
            && dir
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return crate::checkpoint::gguf::load_gguf(dir, options, device);
        }
        match stored_quant(dir)? {
            StoredQuant::Ours(q) => return save::load_quantized(dir, &q, options.dtype, device),
            StoredQuant::Awq(q) => {
                return crate::checkpoint::awq::load_awq(dir, &q, options, device);
            }
            StoredQuant::None => {}
        }
        if options.quant.is_dense() {
            return Self::load(dir, options.dtype, device);
        }
        let config = InternLM2Config::from_hf_file(dir.join("config.json"))?;
        let mut reader = WeightReader::open(dir)?;
        let model = assemble(
            &config,
            &mut HfSource {
                reader: &mut reader,
                quant: options.quant,
                dtype: options.dtype,
                device: device.clone(),
            },
        )?;
        reject_leftovers(&reader)?;
        Ok(model)
    }

    /// Packs the dense weights of a model in memory as `quant` says (already packed layers stay
    /// as they are). Dense layers are read in f32 and replaced one at a time.
    pub fn quantize(mut self, quant: &QuantConfig) -> Result<Self, QuantError> {
        let device = self.device();
        let dtype = self.dtype();
        fn pack_linear<B: Kernels>(
            l: &mut Linear<B>,
            format: Option<WeightFormat>,
            device: &B::Device,
        ) -> Result<(), QuantError> {
            let (Some(format), None) = (format, &l.packed) else {
                return Ok(());
            };
            let [rows, cols] = l.dims();
            let values = dense_values(l.weight.val());
            let bias = l.bias.as_ref().map(|b| b.val().cast(DType::F32));
            let lora = l.lora.take();
            *l = Linear::from_packed(pack(&values, rows, cols, format)?, bias, device);
            l.lora = lora;
            Ok(())
        }
        for layer in &mut self.model.layers {
            for l in [
                &mut layer.attention.wqkv,
                &mut layer.attention.wo,
                &mut layer.feed_forward.w1,
                &mut layer.feed_forward.w2,
                &mut layer.feed_forward.w3,
            ] {
                pack_linear(l, quant.body, &device)?;
            }
        }
        if let Some(output) = &mut self.output {
            pack_linear(output, quant.head, &device)?;
        }
        let embed = &mut self.model.tok_embeddings;
        if let (Some(format), None) = (quant.embedding, &embed.packed) {
            let [rows, cols] = embed.dims();
            let values = dense_values(embed.weight.val());
            *embed = Embedding::from_packed(pack(&values, rows, cols, format)?, dtype, &device);
        }
        Ok(self)
    }

    /// `Err` when some weight is packed: quantized models are for inference, and training
    /// code calls this before its first step.
    pub fn check_trainable(&self) -> Result<(), QuantError> {
        match self.packed_layers().into_iter().next() {
            Some((layer, format)) => Err(QuantError::NotTrainable { layer, format }),
            None => Ok(()),
        }
    }

    /// Every packed weight by HuggingFace name, with its (first) format.
    pub fn packed_layers(&self) -> Vec<(String, WeightFormat)> {
        let mut out = Vec::new();
        if let Some(p) = &self.model.tok_embeddings.packed {
            out.push(("model.tok_embeddings.weight".to_string(), p.format()));
        }
        for (i, layer) in self.model.layers.iter().enumerate() {
            let named = [
                ("attention.wqkv", &layer.attention.wqkv),
                ("attention.wo", &layer.attention.wo),
                ("feed_forward.w1", &layer.feed_forward.w1),
                ("feed_forward.w2", &layer.feed_forward.w2),
                ("feed_forward.w3", &layer.feed_forward.w3),
            ];
            for (name, l) in named {
                if let Some(p) = &l.packed {
                    out.push((format!("model.layers.{i}.{name}.weight"), p.format()));
                }
            }
        }
        if let Some(p) = self.output.as_ref().and_then(|o| o.packed.as_ref()) {
            out.push(("output.weight".to_string(), p.format()));
        }
        out
    }

    /// Bytes a decoding step reads from the weights: every linear layer and the head (packed
    /// or dense), not the embedding table (only its looked-up rows are read).
    pub fn weight_bytes_per_token(&self) -> usize {
        let linear = |l: &Linear<B>| match &l.packed {
            Some(p) => p.storage_bytes(),
            None => {
                let w = l.weight.val();
                w.shape().num_elements() * w.dtype().size()
            }
        };
        let mut total = 0;
        for layer in &self.model.layers {
            total += linear(&layer.attention.wqkv) + linear(&layer.attention.wo);
            total += linear(&layer.feed_forward.w1)
                + linear(&layer.feed_forward.w2)
                + linear(&layer.feed_forward.w3);
        }
        total
            + match &self.output {
                Some(o) => linear(o),
                None => match &self.model.tok_embeddings.packed {
                    Some(p) => p.storage_bytes(),
                    None => {
                        let w = self.model.tok_embeddings.weight.val();
                        w.shape().num_elements() * w.dtype().size()
                    }
                },
            }
    }
}

fn dense_values<B: Kernels>(w: Tensor<B, 2>) -> Vec<f32> {
    w.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data")
}
