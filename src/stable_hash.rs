//! One 64-bit hash that is the same in every process and every release (FNV-1a, then a
//! splitmix64 finaliser). The ring, cookie backend tags, rate-limit slots and
//! predictive path shapes all need keys that hash alike across restarts and across
//! drover instances, which `std`'s randomly seeded hasher does not give (leaf module).

/// FNV-1a over `bytes`, finalised (splitmix64) so similar keys spread out.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn is_stable_and_spreads_neighbours() {
        assert_eq!(fnv1a(b"worker-1"), fnv1a(b"worker-1"));
        assert_ne!(fnv1a(b"worker-1"), fnv1a(b"worker-2"));
        assert_ne!(
            fnv1a(&1u64.to_le_bytes()) >> 60,
            fnv1a(&2u64.to_le_bytes()) >> 60
        );
    }
}
