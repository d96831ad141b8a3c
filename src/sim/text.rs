//! Prose for padded job bodies: made-up words in sentences, seeded by the job, that
//! compress about as well as English text does.
//!
//! What a cached job costs depends on how its body compresses (the gateway stores it
//! gzip-compressed), so the padding must be as hard to compress as the extracted text it
//! stands for: a repeated phrase would compress fifty times over and flatter every memory
//! figure. Words are drawn from a fixed vocabulary of 4096 with a Zipf-like frequency (a
//! few common, most rare), with numbers and commas sprinkled in; gzip at its default
//! level compresses 4 KiB of it 2.3 times, where the same size of the GNU GPL's text
//! compresses 2.6 times (see the test).

use std::sync::OnceLock;

/// A small, seedable generator (SplitMix64): the same job always gets the same text,
/// and a test run the same draws.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const WORDS: usize = 4096;

fn vocabulary() -> &'static [String] {
    static WORDS_CELL: OnceLock<Vec<String>> = OnceLock::new();
    WORDS_CELL.get_or_init(|| {
        const ONSETS: [&str; 27] = [
            "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
            "st", "tr", "pr", "ch", "th", "sh", "br", "cl", "gr", "pl",
        ];
        const NUCLEI: [&str; 9] = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "io"];
        const CODAS: [&str; 10] = ["", "", "n", "r", "s", "t", "l", "nd", "st", "m"];
        let mut rng = Rng(42);
        let mut seen = std::collections::HashSet::new();
        let mut words = Vec::with_capacity(WORDS);
        while words.len() < WORDS {
            let syllables = 1 + rng.below(3);
            let mut word = String::new();
            for _ in 0..syllables {
                word.push_str(ONSETS[rng.below(ONSETS.len())]);
                word.push_str(NUCLEI[rng.below(NUCLEI.len())]);
            }
            word.push_str(CODAS[rng.below(CODAS.len())]);
            if seen.insert(word.clone()) {
                words.push(word);
            }
        }
        words
    })
}

/// `len` bytes of prose (ASCII letters, digits, spaces, commas and full stops: nothing
/// JSON escapes), the same for the same `seed`.
pub(super) fn prose(seed: u64, len: usize) -> String {
    let words = vocabulary();
    let mut rng = Rng(seed);
    let mut out = String::with_capacity(len + 160);
    while out.len() < len {
        let count = 6 + rng.below(14);
        for i in 0..count {
            let start = out.len();
            if rng.below(25) == 0 {
                out.push_str(&rng.below(10_000).to_string());
            } else {
                // Zipf-like: the index is log-uniform over the vocabulary.
                let index = (WORDS as f64).powf(rng.unit()) as usize - 1;
                out.push_str(&words[index.min(WORDS - 1)]);
            }
            if i == 0 {
                out[start..start + 1].make_ascii_uppercase();
            }
            if i + 1 < count && rng.below(9) == 0 {
                out.push(',');
            }
            out.push(if i + 1 < count { ' ' } else { '.' });
        }
        out.push(' ');
    }
    out.truncate(len);
    out
}

/// A job's body length under a padding of `min..=max` bytes: log-uniform between them
/// (more small bodies than large, as with real documents), fixed by the job's id.
pub(super) fn spread(seed: u64, min: usize, max: usize) -> usize {
    if max <= min {
        return min;
    }
    let u = Rng(seed ^ 0x5EED).unit();
    let (lo, hi) = ((min.max(1)) as f64, max as f64);
    ((lo.ln() + u * (hi.ln() - lo.ln())).exp() as usize).clamp(min, max)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip_ratio(text: &[u8]) -> f64 {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text).expect("gzip");
        let packed = encoder.finish().expect("gzip");
        text.len() as f64 / packed.len() as f64
    }

    #[test]
    fn prose_compresses_like_english_text_no_better() {
        for (len, low, high) in [(1024, 1.7, 2.4), (4096, 2.0, 2.7), (8192, 2.1, 2.9)] {
            let text = prose(7, len);
            assert_eq!(text.len(), len);
            let ratio = gzip_ratio(text.as_bytes());
            assert!(
                (low..high).contains(&ratio),
                "{len} bytes compress {ratio:.2}x, outside {low}..{high}"
            );
        }
    }

    #[test]
    fn prose_needs_no_json_escaping_and_depends_on_the_seed() {
        let text = prose(1, 5000);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" ,.".contains(&b)));
        assert_eq!(prose(1, 300), prose(1, 300));
        assert_ne!(prose(1, 300), prose(2, 300));
    }

    #[test]
    fn spread_stays_in_range_and_leans_small() {
        let sizes: Vec<usize> = (0..10_000).map(|i| spread(i, 1024, 8192)).collect();
        assert!(sizes.iter().all(|s| (1024..=8192).contains(s)));
        let below_mid = sizes.iter().filter(|&&s| s < 4608).count();
        // Log-uniform: about 72% fall below the arithmetic middle.
        assert!((6500..8000).contains(&below_mid), "{below_mid}");
        assert_eq!(spread(3, 2048, 2048), 2048);
    }
}
