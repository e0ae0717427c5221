//! A keyed fast hash for maps on the per-statement path whose keys clients choose (cache
//! keys, prepared statement and portal names): foldhash, seeded from the operating system's
//! randomness rather than foldhash's own address-and-clock seed (docs/dependencies.md).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::SharedSeed;

/// The `BuildHasher` of [`keyed_state`].
pub type KeyedState = foldhash::fast::SeedableRandomState;

/// A hasher state keyed with this process's random seed and a random per-state one: a
/// client cannot predict which keys collide. About 100 instructions to make (a SipHash),
/// then foldhash's few per key.
pub fn keyed_state() -> KeyedState {
    // std's RandomState is keyed from the operating system's randomness (once per thread,
    // then varied per instance): its SipHash of a constant is an unpredictable 64 bits.
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(RandomState::new().hash_one(0u64)));
    KeyedState::with_seed(RandomState::new().hash_one(1u64), shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_hash_alike_within_and_apart_across() {
        let (a, b) = (keyed_state(), keyed_state());
        assert_eq!(a.hash_one("P_1"), a.clone().hash_one("P_1"));
        assert_ne!(a.hash_one("P_1"), b.hash_one("P_1"));
    }
}
