//! RL loss kernels (owned by the kernels work).
