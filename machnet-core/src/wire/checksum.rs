//! CRC32C packet checksum (docs/PROTOCOL.md §2.5).
//!
//! The checksum covers the whole packet with the checksum field taken as zero. A stored value of
//! zero means "no checksum" (the sender relies on the datapath's own checksum, like UDP's zero
//! checksum); a computed CRC of zero is therefore stored as `0xFFFF_FFFF`.

use super::field;

/// Outcome of checking a packet's checksum field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumStatus {
    /// The field is zero: the sender did not compute one.
    Absent,
    /// The field matches the packet contents.
    Valid,
    /// The field does not match: the packet was corrupted.
    Invalid,
}

/// Computes the value to store in the checksum field of `packet` (whose checksum field may hold
/// anything: it is treated as zero).
pub fn compute(packet: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&packet[..field::CHECKSUM.start]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    let crc = crc32c::crc32c_append(crc, &packet[field::CHECKSUM.end..]);
    if crc == 0 {
        u32::MAX
    } else {
        crc
    }
}

/// Checks the checksum field of a packet at least [`super::HEADER_LEN`] bytes long.
pub fn verify(packet: &[u8]) -> ChecksumStatus {
    let stored = u32::from_be_bytes(packet[field::CHECKSUM].try_into().unwrap());
    if stored == 0 {
        ChecksumStatus::Absent
    } else if stored == compute(packet) {
        ChecksumStatus::Valid
    } else {
        ChecksumStatus::Invalid
    }
}
