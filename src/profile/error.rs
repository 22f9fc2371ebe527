//! Why a model cannot be served on a given chip set under a given engine: the errors
//! [`super::PerfModel::new`] and [`super::PerfModel::with_table`] return, each naming the
//! model, the chips and what would make it fit.

use super::spec::Dtype;

/// Why a model cannot be served on a given chip set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("{model} needs {need_gb:.1} GB of weights per chip but {chip} x{tp} leaves {have_gb:.1} GB per chip for them (memory × utilisation − reserve); use more chips (larger tp)")]
    WeightsDoNotFit {
        model: String,
        chip: String,
        tp: u32,
        need_gb: f64,
        have_gb: f64,
    },
    #[error("{model} on {chip} x{tp}: no room for KV cache after the weights ({free_gb:.2} GB free per chip)")]
    NoKvRoom {
        model: String,
        chip: String,
        tp: u32,
        free_gb: f64,
    },
    #[error("tensor parallelism must be at least 1")]
    ZeroTp,
    #[error("{model}'s {heads} attention heads ({kv_heads} KV heads) do not split evenly over {chip} x{tp} ({ranks} ranks): the ranks must divide the attention heads, and divide or be a multiple of the KV heads, as vLLM requires; tp {valid} would")]
    HeadsDoNotSplit {
        model: String,
        chip: String,
        tp: u32,
        ranks: u32,
        heads: u32,
        kv_heads: u32,
        /// The tensor-parallel degrees up to 64 that would split them.
        valid: String,
    },
    #[error("{chip} has no {dtype} tensor-core peak; serve {model} in {supported}")]
    UnsupportedDtype {
        chip: String,
        model: String,
        dtype: Dtype,
        supported: String,
    },
    #[error("measured table `{table}` is for {table_for}, not {serving}")]
    TableMismatch {
        table: String,
        table_for: String,
        serving: String,
    },
}
