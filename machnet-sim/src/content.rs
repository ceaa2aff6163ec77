//! Message contents that the receiver can check without being told what was sent.
//!
//! The bytes of a message are a pure function of (run seed, [`MessageId`], length): a 16-byte
//! header — a check word mixing everything, the flow tag, the direction and the index — followed
//! by a SplitMix64 stream, truncated to the length. Even a 1-byte message depends on its index, so
//! a duplicate or a message out of order is caught (with 255/256 probability for 1-byte messages,
//! always for messages of 16 bytes or more, and in any case by the final count).

use std::fmt;

use bytes::Bytes;

use crate::seed::mix64;

/// Bytes of the self-describing header at the start of every message (fewer if the message is
/// shorter).
pub const HEADER_LEN: usize = 16;

/// Which way a message travels on its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// From the side that called `connect` to the side that accepted.
    ClientToServer,
    /// From the accepting side to the connecting side.
    ServerToClient,
}

impl Direction {
    /// 0 for client→server, 1 for server→client.
    pub fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ClientToServer => "client→server",
            Direction::ServerToClient => "server→client",
        })
    }
}

/// Identity of one message of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    /// The workload's tag of the flow the message travels on.
    pub flow_tag: u32,
    /// Which way it travels.
    pub direction: Direction,
    /// Position in its flow and direction, from 0.
    pub index: u64,
}

impl MessageId {
    fn stream_seed(&self, run_seed: u64) -> u64 {
        mix64(
            run_seed
                ^ mix64(u64::from(self.flow_tag) << 1 | self.direction.index() as u64)
                ^ mix64(
                    self.index
                        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        .wrapping_add(1),
                ),
        )
    }

    fn header(&self, run_seed: u64) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&(self.stream_seed(run_seed) as u32).to_le_bytes());
        h[4..8].copy_from_slice(&self.flow_tag.to_le_bytes());
        let dir_index = (self.direction.index() as u64) << 63 | (self.index & !(1 << 63));
        h[8..16].copy_from_slice(&dir_index.to_le_bytes());
        h
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flow tag {} {} message #{}",
            self.flow_tag, self.direction, self.index
        )
    }
}

/// What a received message's header claims it is (when it is long enough to carry one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedHeader {
    /// Identifies the flow the message was generated for.
    pub flow_tag: u32,
    /// Which side sent it.
    pub direction: Direction,
    /// Index of the message in its flow and direction.
    pub index: u64,
}

/// Reads the header of a message of at least [`HEADER_LEN`] bytes.
pub fn decode_header(data: &[u8]) -> Option<DecodedHeader> {
    if data.len() < HEADER_LEN {
        return None;
    }
    let flow_tag = u32::from_le_bytes(data[4..8].try_into().ok()?);
    let raw = u64::from_le_bytes(data[8..16].try_into().ok()?);
    let direction = if raw >> 63 == 0 {
        Direction::ClientToServer
    } else {
        Direction::ServerToClient
    };
    Some(DecodedHeader {
        flow_tag,
        direction,
        index: raw & !(1 << 63),
    })
}

/// The deterministic word stream that follows the header.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}

/// The `len`-byte message `id` of the run with seed `run_seed`.
pub fn generate(run_seed: u64, id: MessageId, len: usize) -> Bytes {
    let mut buf = vec![0u8; len];
    fill(run_seed, id, &mut buf);
    Bytes::from(buf)
}

/// Writes message `id` (truncated or as long as `buf`) into `buf`.
pub fn fill(run_seed: u64, id: MessageId, buf: &mut [u8]) {
    let header = id.header(run_seed);
    let head = buf.len().min(HEADER_LEN);
    buf[..head].copy_from_slice(&header[..head]);
    let mut stream = Stream(id.stream_seed(run_seed));
    for chunk in buf[head..].chunks_mut(8) {
        let word = stream.next().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// How a received message differs from the expected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentError {
    /// The length is wrong.
    Length {
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// The bytes differ first at `offset`.
    Bytes {
        /// Position of the first differing byte.
        offset: usize,
        /// The expected byte.
        expected: u8,
        /// The byte received.
        got: u8,
    },
}

impl fmt::Display for ContentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentError::Length { expected, got } => {
                write!(f, "length {got} bytes, expected {expected}")
            }
            ContentError::Bytes {
                offset,
                expected,
                got,
            } => {
                write!(f, "byte {offset} is 0x{got:02x}, expected 0x{expected:02x}")
            }
        }
    }
}

/// Checks that `data` is exactly message `id` of length `expected_len`, without allocating.
pub fn verify(
    run_seed: u64,
    id: MessageId,
    expected_len: usize,
    data: &[u8],
) -> Result<(), ContentError> {
    if data.len() != expected_len {
        return Err(ContentError::Length {
            expected: expected_len,
            got: data.len(),
        });
    }
    let header = id.header(run_seed);
    let head = data.len().min(HEADER_LEN);
    if let Some(i) = (0..head).find(|&i| data[i] != header[i]) {
        return Err(ContentError::Bytes {
            offset: i,
            expected: header[i],
            got: data[i],
        });
    }
    let mut stream = Stream(id.stream_seed(run_seed));
    for (n, chunk) in data[head..].chunks(8).enumerate() {
        let word = stream.next().to_le_bytes();
        if chunk != &word[..chunk.len()] {
            let i = (0..chunk.len()).find(|&i| chunk[i] != word[i]).unwrap_or(0);
            return Err(ContentError::Bytes {
                offset: head + n * 8 + i,
                expected: word[i],
                got: chunk[i],
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: u64) -> MessageId {
        MessageId {
            flow_tag: 9,
            direction: Direction::ServerToClient,
            index,
        }
    }

    #[test]
    fn generated_messages_verify_and_carry_their_identity() {
        for len in [1usize, 7, 15, 16, 17, 23, 24, 1000, 70_001] {
            let m = generate(5, id(3), len);
            assert_eq!(m.len(), len);
            verify(5, id(3), len, &m).unwrap();
            if len >= HEADER_LEN {
                let h = decode_header(&m).unwrap();
                assert_eq!(
                    (h.flow_tag, h.direction, h.index),
                    (9, Direction::ServerToClient, 3)
                );
            }
        }
    }

    #[test]
    fn detects_changes_wrong_identity_and_length() {
        let m = generate(5, id(3), 100);
        let mut bad = m.to_vec();
        bad[57] ^= 4;
        assert!(matches!(
            verify(5, id(3), 100, &bad),
            Err(ContentError::Bytes { offset: 57, .. })
        ));
        assert!(verify(5, id(4), 100, &m).is_err());
        assert!(verify(6, id(3), 100, &m).is_err());
        assert!(matches!(
            verify(5, id(3), 101, &m),
            Err(ContentError::Length { .. })
        ));
    }

    #[test]
    fn one_byte_messages_depend_on_their_index() {
        let distinct: std::collections::BTreeSet<u8> =
            (0..64).map(|i| generate(5, id(i), 1)[0]).collect();
        assert!(distinct.len() > 40, "{}", distinct.len());
    }
}
