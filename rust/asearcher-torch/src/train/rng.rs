//! The trainer's serialisable random number generator: ChaCha20 (rand_chacha) whose full state
//! (seed, stream, word position) is a small JSON-friendly value, so a resumed run draws exactly the
//! numbers an uninterrupted run would have drawn.

use crate::{Result, TorchError};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// The algorithm name recorded in [`RngState::algorithm`].
pub const RNG_ALGORITHM: &str = "chacha20";

/// A ChaCha20 generator for data shuffling and sampling whose state can be saved and restored.
///
/// It implements [`RngCore`], so every `rand` API (`shuffle`, `random_range`, ...) accepts it.
#[derive(Clone, Debug)]
pub struct TrainRng {
    inner: ChaCha20Rng,
}

/// The complete state of a [`TrainRng`], as stored in `trainer_state.json`.
///
/// The seed is 64 hex digits and the word position a decimal string, so the value survives JSON
/// tools that only handle 53-bit or 64-bit numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngState {
    /// Always [`RNG_ALGORITHM`].
    pub algorithm: String,
    /// The 32-byte key, hex encoded.
    pub seed: String,
    /// The ChaCha stream (nonce).
    pub stream: u64,
    /// Index of the next 32-bit word of the key stream, as a decimal string.
    pub word_pos: String,
}

impl TrainRng {
    /// A generator seeded from a `u64` (expanded to a 32-byte key) on the given stream.
    /// Different streams of one seed give independent sequences (e.g. one per worker).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut inner = ChaCha20Rng::seed_from_u64(seed);
        inner.set_stream(stream);
        TrainRng { inner }
    }

    /// The current state; [`TrainRng::from_state`] of it continues the same sequence.
    pub fn state(&self) -> RngState {
        RngState {
            algorithm: RNG_ALGORITHM.to_string(),
            seed: hex_encode(&self.inner.get_seed()),
            stream: self.inner.get_stream(),
            word_pos: self.inner.get_word_pos().to_string(),
        }
    }

    /// Rebuilds a generator from a saved state; errors name the malformed field.
    pub fn from_state(state: &RngState) -> Result<Self> {
        if state.algorithm != RNG_ALGORITHM {
            return Err(TorchError::config(
                "rng.algorithm",
                format!("expected `{RNG_ALGORITHM}`, got `{}`", state.algorithm),
            ));
        }
        let seed = hex_decode_32(&state.seed)
            .ok_or_else(|| TorchError::config("rng.seed", "expected 64 hex digits"))?;
        let word_pos: u128 = state.word_pos.parse().map_err(|_| {
            TorchError::config(
                "rng.word_pos",
                format!("expected a decimal integer, got `{}`", state.word_pos),
            )
        })?;
        let mut inner = ChaCha20Rng::from_seed(seed);
        inner.set_stream(state.stream);
        inner.set_word_pos(word_pos);
        Ok(TrainRng { inner })
    }
}

impl RngCore for TrainRng {
    fn next_u32(&mut self) -> u32 {
        self.inner.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.inner.fill_bytes(dst)
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode_32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::Rng;

    fn draw(rng: &mut TrainRng) -> (Vec<usize>, f64, u32, u64) {
        let mut perm: Vec<usize> = (0..17).collect();
        perm.shuffle(rng);
        (perm, rng.random::<f64>(), rng.next_u32(), rng.next_u64())
    }

    #[test]
    fn resumed_run_draws_the_same_numbers_as_an_uninterrupted_one() {
        let mut uninterrupted = TrainRng::new(1234, 7);
        let mut first_half = TrainRng::new(1234, 7);
        for _ in 0..5 {
            assert_eq!(draw(&mut uninterrupted), draw(&mut first_half));
        }
        // An odd number of u32 draws leaves the position in the middle of a u64 / block.
        first_half.next_u32();
        uninterrupted.next_u32();
        let json = serde_json::to_string(&first_half.state()).unwrap();
        let state: RngState = serde_json::from_str(&json).unwrap();
        let mut resumed = TrainRng::from_state(&state).unwrap();
        for _ in 0..20 {
            assert_eq!(draw(&mut uninterrupted), draw(&mut resumed));
        }
    }

    #[test]
    fn streams_and_seeds_differ() {
        let a = draw(&mut TrainRng::new(1, 0));
        assert_ne!(a, draw(&mut TrainRng::new(1, 1)));
        assert_ne!(a, draw(&mut TrainRng::new(2, 0)));
        assert_eq!(a, draw(&mut TrainRng::new(1, 0)));
    }

    #[test]
    fn malformed_state_names_the_field() {
        let good = TrainRng::new(3, 4).state();
        let cases = [
            (
                RngState {
                    seed: "zz".into(),
                    ..good.clone()
                },
                "rng.seed",
            ),
            (
                RngState {
                    word_pos: "-1".into(),
                    ..good.clone()
                },
                "rng.word_pos",
            ),
            (
                RngState {
                    algorithm: "pcg".into(),
                    ..good.clone()
                },
                "rng.algorithm",
            ),
        ];
        for (state, field) in cases {
            let err = TrainRng::from_state(&state).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
