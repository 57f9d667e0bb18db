//! TODO (issue 4): scheduler.
