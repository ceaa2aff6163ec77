//! `machnet-echo sink`: receives tagged messages and checks that each arrived exactly once and
//! intact. Used to count messages lost by apps that send and exit at once (docs/CHANNEL.md §5,
//! `examples/echo/send_then_exit.sh`).
//!
//! A tagged message is at least 8 bytes: a little-endian u64 tag, then byte `i` (from 8 on) is
//! `(tag * 31 + i) as u8` — simple enough to produce from C.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use machnet::Channel;

/// The payload byte at offset `i` (≥ 8) of a message tagged `tag`.
pub(crate) fn tagged_byte(tag: u64, i: usize) -> u8 {
    (tag.wrapping_mul(31).wrapping_add(i as u64)) as u8
}

/// What a sink saw.
#[derive(Debug, Default)]
pub(crate) struct SinkReport {
    /// Messages received.
    pub received: u64,
    /// Distinct tags received intact.
    pub distinct: u64,
    /// Messages whose tag was seen before.
    pub duplicates: u64,
    /// Messages shorter than a tag or with wrong content.
    pub corrupt: u64,
}

impl SinkReport {
    /// The report as one JSON object; `expected` adds the count of missing tags.
    pub(crate) fn json(&self, expected: Option<u64>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "received": self.received,
            "distinct": self.distinct,
            "duplicates": self.duplicates,
            "corrupt": self.corrupt,
        });
        if let Some(n) = expected {
            v["expected"] = n.into();
            v["missing"] = n.saturating_sub(self.distinct).into();
        }
        v
    }
}

/// Receives on `ch` until `expect` distinct tags arrived, or nothing arrived for `idle`.
pub(crate) fn run(
    ch: &mut Channel,
    expect: Option<u64>,
    idle: Duration,
) -> Result<SinkReport, String> {
    let mut seen = HashSet::new();
    let mut r = SinkReport::default();
    let mut last = Instant::now();
    while expect.is_none_or(|n| r.distinct < n) && last.elapsed() < idle {
        let Some((_, msg)) = ch
            .recv_timeout(Duration::from_millis(100))
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        last = Instant::now();
        r.received += 1;
        let Some(tag) = msg
            .get(..8)
            .map(|t| u64::from_le_bytes(t.try_into().unwrap()))
        else {
            r.corrupt += 1;
            continue;
        };
        if msg[8..]
            .iter()
            .enumerate()
            .any(|(i, &b)| b != tagged_byte(tag, i + 8))
        {
            r.corrupt += 1;
        } else if seen.insert(tag) {
            r.distinct += 1;
        } else {
            r.duplicates += 1;
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_bytes_depend_on_tag_and_offset() {
        assert_eq!(tagged_byte(0, 8), 8);
        assert_eq!(tagged_byte(1, 8), 39);
        assert_ne!(tagged_byte(2, 100), tagged_byte(3, 100));
    }
}
