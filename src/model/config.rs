//! Model configuration: what `config.json` of a native model holds.

use serde::{Deserialize, Serialize};

use super::error::ModelError;

/// The native format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Where the reset gate acts on the recurrent candidate term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetMode {
    /// The seed's cell (ONNX `linear_before_reset = 0`, Keras `reset_after = False`):
    /// h̃ = tanh(W_h x + U_h (r ⊙ h) + b_h).
    BeforeMatmul,
    /// PyTorch `nn.GRU`, cuDNN, ONNX `linear_before_reset = 1`:
    /// n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)).
    AfterMatmul,
}

impl ResetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetMode::BeforeMatmul => "before_matmul",
            ResetMode::AfterMatmul => "after_matmul",
        }
    }
}

/// What the outputs mean; decides the training loss and how clients read outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Per-step real-valued outputs (mean squared error in training).
    Regression,
    /// Per-step class logits (cross-entropy on a label at every step).
    ClassifyPerStep,
    /// Class logits; only the last step of each sequence carries a label.
    ClassifyLast,
}

/// Element type of the weights and of all computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    F32,
    F64,
}

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F64 => candle_core::DType::F64,
        }
    }

    pub fn from_dtype(dtype: candle_core::DType) -> Result<Self, ModelError> {
        match dtype {
            candle_core::DType::F32 => Ok(Precision::F32),
            candle_core::DType::F64 => Ok(Precision::F64),
            other => Err(ModelError::Config(format!(
                "unsupported dtype {other:?}: gru-serve computes in f32 or f64"
            ))),
        }
    }
}

/// Everything needed to build a model's shapes. Serialised as `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub format_version: u32,
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    /// Size of the linear readout head (H → O); `None` means the top layer's h is the output.
    pub output_size: Option<usize>,
    pub reset_mode: ResetMode,
    pub task: Task,
    pub dtype: Precision,
}

/// Largest size accepted for any dimension; keeps a corrupt config from asking for terabytes.
pub const MAX_DIM: usize = 1 << 16;
/// Largest layer count accepted.
pub const MAX_LAYERS: usize = 64;

impl ModelConfig {
    pub fn new(input_size: usize, hidden_size: usize, num_layers: usize) -> Self {
        ModelConfig {
            format_version: FORMAT_VERSION,
            input_size,
            hidden_size,
            num_layers,
            output_size: None,
            reset_mode: ResetMode::AfterMatmul,
            task: Task::Regression,
            dtype: Precision::F32,
        }
    }

    pub fn with_head(mut self, output_size: usize) -> Self {
        self.output_size = Some(output_size);
        self
    }

    pub fn with_reset_mode(mut self, mode: ResetMode) -> Self {
        self.reset_mode = mode;
        self
    }

    pub fn with_task(mut self, task: Task) -> Self {
        self.task = task;
        self
    }

    pub fn with_dtype(mut self, dtype: Precision) -> Self {
        self.dtype = dtype;
        self
    }

    /// Width of each step's output: the head's size, or H without a head.
    pub fn output_dim(&self) -> usize {
        self.output_size.unwrap_or(self.hidden_size)
    }

    /// Input width of layer `k`.
    pub fn layer_input_size(&self, k: usize) -> usize {
        if k == 0 {
            self.input_size
        } else {
            self.hidden_size
        }
    }

    /// Number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let layers: usize = (0..self.num_layers)
            .map(|k| 3 * h * (self.layer_input_size(k) + h) + 6 * h)
            .sum();
        layers + self.output_size.map_or(0, |o| o * h + o)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        if self.format_version != FORMAT_VERSION {
            return bad(format!(
                "unknown format_version {} (this build reads version {FORMAT_VERSION})",
                self.format_version
            ));
        }
        for (name, v) in [
            ("input_size", self.input_size),
            ("hidden_size", self.hidden_size),
            ("output_size", self.output_size.unwrap_or(1)),
        ] {
            if v == 0 || v > MAX_DIM {
                return bad(format!("{name} = {v}: must be in 1..={MAX_DIM}"));
            }
        }
        if self.num_layers == 0 || self.num_layers > MAX_LAYERS {
            return bad(format!(
                "num_layers = {}: must be in 1..={MAX_LAYERS}",
                self.num_layers
            ));
        }
        if matches!(self.task, Task::ClassifyPerStep | Task::ClassifyLast) {
            match self.output_size {
                Some(o) if o >= 2 => {}
                other => {
                    return bad(format!(
                    "task {:?} needs a head with output_size >= 2 (class logits), got {other:?}",
                    self.task
                ))
                }
            }
        }
        Ok(())
    }
}
