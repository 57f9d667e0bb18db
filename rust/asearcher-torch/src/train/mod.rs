//! Training primitives: the AdamW optimizer and gradient clipping ([`optim`]), learning-rate
//! schedules ([`schedule`]), token-budget micro-batch packing and gradient accumulation
//! ([`packing`]), crash-safe checkpoints ([`checkpoint`]) and a resumable RNG ([`rng`]).

pub mod checkpoint;
pub mod optim;
pub mod packing;
pub mod rng;
pub mod schedule;

pub use checkpoint::{
    list_checkpoints, load_checkpoint, load_latest, write_safetensors, Checkpoint,
    CheckpointManager, LoadedCheckpoint, TrainerState,
};
pub use optim::{clip_grad_norm, no_decay_for_norms_and_biases, AdamW, AdamWConfig};
pub use packing::{
    accumulate_gradients, pack_by_tokens, pack_row, packed_causal_mask, pad_batch,
    AccumulationStats, Oversize, PackedRow, PaddedBatch, TokenSequence, TokenValues,
};
pub use rng::{RngState, TrainRng};
pub use schedule::{LrSchedule, ScheduleKind};
