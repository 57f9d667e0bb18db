//! TODO (issue 4): runner.
