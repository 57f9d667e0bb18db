//! Training primitives (owned by the training work).
