//! The training run's configuration.
