//! Invocation ids: 32 lowercase hex digits, the first 12 the millisecond
//! timestamp and the last 20 random, strictly increasing within one
//! generator so that id order is enqueue order.

use rand::Rng;

/// Length of an invocation id.
pub const ID_LEN: usize = 32;

/// [`is_valid_id`] as an ECMA-262 pattern, for the OpenAPI document.
pub const ID_PATTERN: &str = "^[0-9a-f]{32}$";

/// Whether `s` has the shape of an invocation id.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes strictly increasing ids.
#[derive(Debug)]
pub(crate) struct IdGenerator {
    last_ms: u64,
    last_rand: u128,
}

/// The random part's range: 80 bits.
const RAND_BITS: u32 = 80;
const RAND_MASK: u128 = (1 << RAND_BITS) - 1;

impl IdGenerator {
    /// A generator whose ids all sort after `after` (the newest id stored),
    /// even if the clock went backwards since.
    pub(crate) fn new(after: Option<&str>) -> Self {
        let parsed = after.filter(|s| is_valid_id(s)).and_then(|s| {
            let ms = u64::from_str_radix(&s[..12], 16).ok()?;
            let rand = u128::from_str_radix(&s[12..], 16).ok()?;
            Some((ms, rand))
        });
        let (last_ms, last_rand) = parsed.unwrap_or((0, 0));
        IdGenerator { last_ms, last_rand }
    }

    /// The next id at `now_ms` milliseconds since the epoch.
    pub(crate) fn next(&mut self, now_ms: u64, rng: &mut impl Rng) -> String {
        let now_ms = now_ms.min((1 << 48) - 1);
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            // Leave headroom so increments within a millisecond never wrap.
            self.last_rand = rng.random::<u128>() & (RAND_MASK >> 1);
        } else {
            self.last_rand += 1 + u128::from(rng.random::<u16>());
            if self.last_rand > RAND_MASK {
                self.last_ms += 1;
                self.last_rand = rng.random::<u128>() & (RAND_MASK >> 1);
            }
        }
        format!("{:012x}{:020x}", self.last_ms, self.last_rand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_look_right() {
        let mut g = IdGenerator::new(None);
        let mut rng = rand::rng();
        let mut last = String::new();
        for i in 0..10_000u64 {
            // The clock stalls and even goes backwards.
            let id = g.next(1_700_000_000_000 + (i / 100) - (i % 7), &mut rng);
            assert!(is_valid_id(&id), "{id}");
            assert!(id > last, "{id} <= {last}");
            last = id;
        }
        // A new generator continues after the newest stored id.
        let mut g2 = IdGenerator::new(Some(&last));
        assert!(g2.next(1, &mut rng) > last);
        assert!(!is_valid_id("0123"));
        assert!(!is_valid_id(&"G".repeat(32)));
        assert!(!is_valid_id(&"A".repeat(32)));
    }
}
