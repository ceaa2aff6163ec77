//! Message contents: a fixed pseudo-random template stamped with the flow index and a sequence
//! number, so every echo can be checked byte for byte without keeping copies.

/// Generates message contents and checks echoes.
pub(crate) struct Payload {
    template: Vec<u8>,
}

/// Bytes at the front of a message that carry the stamp (sequence number, flow index).
const STAMP: usize = 12;

impl Payload {
    /// A template of `size` bytes.
    pub(crate) fn new(size: usize) -> Self {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let template = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Payload { template }
    }

    fn stamp(flow: u32, seq: u64) -> [u8; STAMP] {
        let mut s = [0u8; STAMP];
        s[..8].copy_from_slice(&seq.to_le_bytes());
        s[8..].copy_from_slice(&flow.to_le_bytes());
        s
    }

    /// Writes message `seq` of `flow` into `buf` (which must be `len()` bytes).
    pub(crate) fn fill(&self, flow: u32, seq: u64, buf: &mut [u8]) {
        buf.copy_from_slice(&self.template);
        let s = Self::stamp(flow, seq);
        let n = STAMP.min(buf.len());
        buf[..n].copy_from_slice(&s[..n]);
    }

    /// Whether `got` is exactly message `seq` of `flow`.
    pub(crate) fn matches(&self, flow: u32, seq: u64, got: &[u8]) -> bool {
        if got.len() != self.template.len() {
            return false;
        }
        let s = Self::stamp(flow, seq);
        let n = STAMP.min(got.len());
        got[..n] == s[..n] && got[n..] == self.template[n..]
    }

    /// The sequence number stamped into a message (as much of it as the message holds).
    pub(crate) fn seq_of(got: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        let n = got.len().min(8);
        b[..n].copy_from_slice(&got[..n]);
        u64::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_match() {
        for size in [1usize, 7, 12, 64, 4096] {
            let p = Payload::new(size);
            let mut buf = vec![0u8; size];
            p.fill(3, 77, &mut buf);
            assert!(p.matches(3, 77, &buf));
            if size >= 12 {
                assert!(!p.matches(4, 77, &buf));
            }
            assert!(!p.matches(3, 78, &buf));
            let last = buf.len() - 1;
            buf[last] ^= 1;
            assert!(!p.matches(3, 77, &buf) || size <= 1);
        }
        assert_eq!(Payload::seq_of(&77u64.to_le_bytes()), 77);
    }
}
