//! Training primitives: the AdamW optimizer and gradient clipping ([`optim`]), learning-rate
//! schedules ([`schedule`]), token-budget micro-batch packing and gradient accumulation
//! ([`packing`]), crash-safe checkpoints ([`checkpoint`]) and a resumable RNG ([`rng`]).

pub mod optim;
pub mod rng;
pub mod schedule;

pub use optim::{clip_grad_norm, no_decay_for_norms_and_biases, AdamW, AdamWConfig};
pub use rng::{RngState, TrainRng};
pub use schedule::{LrSchedule, ScheduleKind};
