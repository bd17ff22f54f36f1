//! A small deterministic random stream for task generators: the same `(seed, split, index)` gives the same task on
//! every machine and every version, which a library RNG does not promise across releases.

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, fast, and good enough to pick numbers and templates.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A stream for one task, mixing the run seed, a stream tag (the split) and the task index.
    pub fn for_task(seed: u64, stream: u64, index: u64) -> Self {
        let mut s = SplitMix64(seed ^ 0x6a09_e667_f3bc_c908);
        let a = s.next_u64() ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut s = SplitMix64(a);
        let b = s.next_u64() ^ index.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        SplitMix64(b)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi` (`hi >= lo`); the tiny modulo bias does not matter here.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_stable_and_distinct() {
        let a: Vec<u64> = (0..3).map(|i| SplitMix64::for_task(1, 0, i).next_u64()).collect();
        let b: Vec<u64> = (0..3).map(|i| SplitMix64::for_task(1, 0, i).next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
        assert_ne!(SplitMix64::for_task(1, 0, 0).next_u64(), SplitMix64::for_task(1, 1, 0).next_u64());
        assert_ne!(SplitMix64::for_task(1, 0, 0).next_u64(), SplitMix64::for_task(2, 0, 0).next_u64());
    }
}
