//! TODO (issue 4): eval.
