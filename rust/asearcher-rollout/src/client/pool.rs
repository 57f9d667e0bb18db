//! TODO (issue 4): pool client.
