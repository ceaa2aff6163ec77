//! The Machnet wire format (docs/PROTOCOL.md §2–§4).
//!
//! Two layers, in the style of smoltcp:
//! - [`Packet`] is a *checked view* over untrusted bytes: [`Packet::new_checked`] validates every
//!   length and field that the accessors rely on, so accessors never panic.
//! - [`Repr`] is the *typed representation*: [`Repr::parse`] applies the semantic rules of the
//!   protocol (which packet types may carry what) and [`Repr::emit`] writes a packet.
//!
//! All multi-byte fields are big-endian (network byte order).

mod checksum;

pub use checksum::{compute as compute_checksum, verify as verify_checksum, ChecksumStatus};

/// `"MN"`: the first two bytes of every Machnet packet (§2).
pub const MAGIC: u16 = 0x4D4E;
/// The protocol version this implementation speaks (§2).
pub const VERSION: u8 = 2;
/// Length of the fixed header (§2).
pub const HEADER_LEN: usize = 48;
/// Length of one SACK block (§3).
pub const SACK_BLOCK_LEN: usize = 8;
/// Maximum SACK blocks in one packet (§3).
pub const MAX_SACK_BLOCKS: usize = 4;
/// Length of the handshake block (§4).
pub const HANDSHAKE_LEN: usize = 40;
/// The largest header a packet can carry: fixed part, all SACK blocks and a handshake block.
pub const MAX_HEADER_LEN: usize = HEADER_LEN + MAX_SACK_BLOCKS * SACK_BLOCK_LEN + HANDSHAKE_LEN;
/// Largest message length the header can describe (`msg_len` is 32 bits; the engine enforces a far
/// smaller configurable limit).
pub const MAX_WIRE_MESSAGE_LEN: u32 = u32::MAX;

mod field {
    pub(super) type Field = core::ops::Range<usize>;
    pub(super) const MAGIC: Field = 0..2;
    pub(super) const VERSION: usize = 2;
    pub(super) const TYPE: usize = 3;
    pub(super) const FLAGS: usize = 4;
    pub(super) const SACK_COUNT: usize = 5;
    pub(super) const SRC_PORT: Field = 6..8;
    pub(super) const DST_PORT: Field = 8..10;
    pub(super) const PAYLOAD_LEN: Field = 10..12;
    pub(super) const SEQ: Field = 12..16;
    pub(super) const ACK: Field = 16..20;
    pub(super) const WINDOW: Field = 20..24;
    pub(super) const TS_VAL: Field = 24..28;
    pub(super) const TS_ECR: Field = 28..32;
    pub(super) const MSG_LEN: Field = 32..36;
    pub(super) const CHECKSUM: Field = 36..40;
    pub(super) const TOKEN: Field = 40..48;
}

/// Packet types (§2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Connection request, sprayed by the client (§5.1).
    Syn = 1,
    /// Connection acceptance, sprayed by the server (§5.1).
    SynAck = 2,
    /// Acknowledgement only: cumulative ACK, SACK blocks, window, timestamps.
    Ack = 3,
    /// One fragment of a message; occupies one sequence number.
    Data = 4,
    /// End of this direction's data; occupies one sequence number.
    Fin = 5,
    /// Abort the connection.
    Rst = 6,
}

impl PacketType {
    /// Decodes a type byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Syn,
            2 => Self::SynAck,
            3 => Self::Ack,
            4 => Self::Data,
            5 => Self::Fin,
            6 => Self::Rst,
            _ => return None,
        })
    }

    /// Whether packets of this type occupy a sequence number and are delivered reliably in order.
    pub fn is_sequenced(self) -> bool {
        matches!(self, Self::Data | Self::Fin)
    }
}

/// Flag bits (§2.2).
pub mod flags {
    /// First fragment of a message; `msg_len` holds the message's total length.
    pub const FIRST: u8 = 0x01;
    /// Last fragment of a message.
    pub const LAST: u8 = 0x02;
    /// The receiver must answer with an ACK immediately (probes, keepalives, handshake ACK).
    pub const ACK_REQ: u8 = 0x04;
    /// A handshake block follows the SACK blocks.
    pub const HANDSHAKE: u8 = 0x08;
    /// Encryption (§12): a SYN's or SYN-ACK's payload starts with a Noise handshake message;
    /// any other packet's payload is sealed (packet number, ciphertext, tag).
    pub const SEALED: u8 = 0x10;
    /// Every bit this version defines; packets with other bits set are rejected.
    pub const ALL: u8 = FIRST | LAST | ACK_REQ | HANDSHAKE | SEALED;
}

/// Why a buffer is not a valid Machnet packet. Each variant is a drop reason the engine counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    /// The buffer is shorter than the fixed header.
    #[error("packet shorter than the fixed header")]
    Truncated,
    /// The magic number is wrong.
    #[error("bad magic number")]
    BadMagic,
    /// The version is not ours.
    #[error("unsupported protocol version")]
    BadVersion,
    /// The type byte names no packet type.
    #[error("unknown packet type")]
    BadType,
    /// Unknown flag bits are set.
    #[error("unknown flag bits set")]
    BadFlags,
    /// More SACK blocks than allowed.
    #[error("more SACK blocks than allowed")]
    TooManySackBlocks,
    /// Lengths in the header disagree with the buffer.
    #[error("header and payload lengths disagree with the datagram length")]
    LengthMismatch,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    BadChecksum,
    /// Fields contradict the packet type.
    #[error("fields are inconsistent with the packet type")]
    Malformed,
}

/// The fixed header of a packet of ours quoted back by an ICMP error (PROTOCOL.md §8.4). An ICMP
/// message quotes only the start of the datagram, so nothing past the fixed header is read and
/// no length or checksum is checked: the fields identify a flow, which then decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotedHeader {
    /// The quoted packet's type.
    pub packet_type: PacketType,
    /// Its source port: ours.
    pub src_port: u16,
    /// Its destination port: the peer's.
    pub dst_port: u16,
    /// Its sequence number.
    pub seq: u32,
    /// Its flow token: the peer's token for the flow (0 on a SYN).
    pub token: u64,
}

impl QuotedHeader {
    /// Reads the fixed header at the start of `quoted`, checking magic, version and type.
    pub fn parse(quoted: &[u8]) -> Result<QuotedHeader, ParseError> {
        let header = quoted.get(..HEADER_LEN).ok_or(ParseError::Truncated)?;
        let p = Packet::new_unchecked(header);
        if p.magic() != MAGIC {
            return Err(ParseError::BadMagic);
        }
        if p.version() != VERSION {
            return Err(ParseError::BadVersion);
        }
        let packet_type = PacketType::from_u8(header[field::TYPE]).ok_or(ParseError::BadType)?;
        Ok(QuotedHeader {
            packet_type,
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq(),
            token: p.token(),
        })
    }
}

/// A checked view over the bytes of one Machnet packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it. Accessors may panic on a short buffer; use
    /// [`Packet::new_checked`] for untrusted input.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after validating magic, version, type, flags and all lengths (§2.3).
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let packet = Self::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    fn check(&self) -> Result<(), ParseError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        if self.magic() != MAGIC {
            return Err(ParseError::BadMagic);
        }
        if self.version() != VERSION {
            return Err(ParseError::BadVersion);
        }
        if PacketType::from_u8(b[field::TYPE]).is_none() {
            return Err(ParseError::BadType);
        }
        if self.flags() & !flags::ALL != 0 {
            return Err(ParseError::BadFlags);
        }
        if self.sack_count() > MAX_SACK_BLOCKS {
            return Err(ParseError::TooManySackBlocks);
        }
        if self.header_len() + usize::from(self.payload_len()) != b.len() {
            return Err(ParseError::LengthMismatch);
        }
        Ok(())
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn read_u16(&self, f: field::Field) -> u16 {
        u16::from_be_bytes(self.buffer.as_ref()[f].try_into().unwrap())
    }

    fn read_u32(&self, f: field::Field) -> u32 {
        u32::from_be_bytes(self.buffer.as_ref()[f].try_into().unwrap())
    }

    /// The magic number field.
    pub fn magic(&self) -> u16 {
        self.read_u16(field::MAGIC)
    }
    /// The version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    /// The packet type. Only valid on a checked packet.
    pub fn packet_type(&self) -> PacketType {
        PacketType::from_u8(self.buffer.as_ref()[field::TYPE]).expect("checked packet")
    }
    /// The flag bits.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// Number of SACK blocks.
    pub fn sack_count(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::SACK_COUNT])
    }
    /// Sender's Machnet port.
    pub fn src_port(&self) -> u16 {
        self.read_u16(field::SRC_PORT)
    }
    /// Receiver's Machnet port.
    pub fn dst_port(&self) -> u16 {
        self.read_u16(field::DST_PORT)
    }
    /// Payload bytes after the header.
    pub fn payload_len(&self) -> u16 {
        self.read_u16(field::PAYLOAD_LEN)
    }
    /// Sequence number.
    pub fn seq(&self) -> u32 {
        self.read_u32(field::SEQ)
    }
    /// Cumulative acknowledgement: next sequence number expected.
    pub fn ack(&self) -> u32 {
        self.read_u32(field::ACK)
    }
    /// Receive window, in packets.
    pub fn window(&self) -> u32 {
        self.read_u32(field::WINDOW)
    }
    /// The sender's timestamp (µs).
    pub fn ts_val(&self) -> u32 {
        self.read_u32(field::TS_VAL)
    }
    /// The timestamp echoed back to the peer (µs), 0 if none.
    pub fn ts_ecr(&self) -> u32 {
        self.read_u32(field::TS_ECR)
    }
    /// Length of the whole message this packet belongs to.
    pub fn msg_len(&self) -> u32 {
        self.read_u32(field::MSG_LEN)
    }
    /// The checksum field (0: none).
    pub fn checksum(&self) -> u32 {
        self.read_u32(field::CHECKSUM)
    }
    /// The flow token: the receiver's secret for this flow (§4.1), 0 on a SYN.
    pub fn token(&self) -> u64 {
        u64::from_be_bytes(self.buffer.as_ref()[field::TOKEN].try_into().unwrap())
    }
    /// Whether a handshake block follows the fixed header.
    pub fn has_handshake(&self) -> bool {
        self.flags() & flags::HANDSHAKE != 0
    }

    /// Length of everything before the payload.
    pub fn header_len(&self) -> usize {
        HEADER_LEN
            + self.sack_count() * SACK_BLOCK_LEN
            + if self.has_handshake() {
                HANDSHAKE_LEN
            } else {
                0
            }
    }

    /// SACK block `i` as `(start, end)`, end exclusive. Only valid on a checked packet.
    pub fn sack_block(&self, i: usize) -> SackBlock {
        let off = HEADER_LEN + i * SACK_BLOCK_LEN;
        let b = self.buffer.as_ref();
        SackBlock {
            start: u32::from_be_bytes(b[off..off + 4].try_into().unwrap()),
            end: u32::from_be_bytes(b[off + 4..off + 8].try_into().unwrap()),
        }
    }

    /// The handshake block, if the HANDSHAKE flag is set. Only valid on a checked packet.
    pub fn handshake(&self) -> Option<Handshake> {
        if !self.has_handshake() {
            return None;
        }
        let off = HEADER_LEN + self.sack_count() * SACK_BLOCK_LEN;
        Some(Handshake::read(
            &self.buffer.as_ref()[off..off + HANDSHAKE_LEN],
        ))
    }

    /// The payload bytes. Only valid on a checked packet.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A run of received sequence numbers `[start, end)` above the cumulative ACK (§3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SackBlock {
    /// First sequence number of the run.
    pub start: u32,
    /// One past the last sequence number of the run.
    pub end: u32,
}

impl SackBlock {
    /// Number of sequence numbers covered (wrapping arithmetic).
    pub fn len(&self) -> u32 {
        self.end.wrapping_sub(self.start)
    }
    /// Whether the block covers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Up to [`MAX_SACK_BLOCKS`] SACK blocks, stored inline (no allocation on the hot path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SackList {
    blocks: [SackBlock; MAX_SACK_BLOCKS],
    len: u8,
}

impl SackList {
    /// An empty list.
    pub const fn new() -> Self {
        SackList {
            blocks: [SackBlock { start: 0, end: 0 }; MAX_SACK_BLOCKS],
            len: 0,
        }
    }
    /// Appends a block; returns false (and does nothing) when full.
    pub fn push(&mut self, block: SackBlock) -> bool {
        if usize::from(self.len) == MAX_SACK_BLOCKS {
            return false;
        }
        self.blocks[usize::from(self.len)] = block;
        self.len += 1;
        true
    }
    /// The blocks, in order.
    pub fn as_slice(&self) -> &[SackBlock] {
        &self.blocks[..usize::from(self.len)]
    }
    /// Number of blocks.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The handshake block carried by SYN, SYN-ACK and the client's packets until the server has
/// confirmed the path (§4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Handshake {
    /// Number of engines on the sender's host (sizes the peer's spray batch, §5.2).
    pub engine_count: u16,
    /// The sender's engine that owns this flow.
    pub engine_id: u16,
    /// First UDP port of the sender's UDP port pool.
    pub udp_port_base: u16,
    /// Number of ports in the sender's UDP port pool (≥ 1).
    pub udp_port_count: u16,
    /// SYN-ACK and handshake ACK: the UDP (source, destination) ports of the packet being
    /// answered, i.e. a path known to reach the answering side's engine. Zero on SYN.
    pub echo_path: UdpPair,
    /// Optional hint: the (source, destination) UDP ports the peer should use to reach the
    /// sender's engine, when the sender can predict its own RSS (§5.4). Zero when unknown.
    pub reply_hint: UdpPair,
    /// Connection attempt number (0 for the first batch), echoed by the SYN-ACK.
    pub attempt: u8,
    /// Largest message the sender is willing to receive.
    pub max_message_len: u32,
    /// Largest UDP payload (a whole Machnet packet) the sender accepts, and so the largest the
    /// peer may send it (§4, §6.4). 0: not announced; the peer assumes
    /// [`DEFAULT_MAX_DATAGRAM`].
    pub max_datagram: u16,
    /// The sender's flow token (§4.1): the secret the peer must put in the `token` field of
    /// every packet it sends on this flow. Never 0.
    pub token: u64,
    /// The sender's initial sequence number (the `seq` of its SYN or SYN-ACK).
    pub isn: u32,
}

/// Smallest datagram limit a host may announce or configure: the largest header plus 64 payload
/// bytes.
pub const MIN_DATAGRAM: usize = MAX_HEADER_LEN + 64;

/// Largest datagram assumed for a peer that does not announce one (§4): a 1500-byte MTU less
/// the IPv4 and UDP headers.
pub const DEFAULT_MAX_DATAGRAM: u16 = 1472;

/// The largest datagram two ends may exchange on a flow: the smaller of what each accepts, a
/// peer that announced nothing counting as [`DEFAULT_MAX_DATAGRAM`] (§6.4).
pub fn agreed_datagram(own: u16, announced_by_peer: u16) -> u16 {
    let peer = if announced_by_peer == 0 {
        DEFAULT_MAX_DATAGRAM
    } else {
        announced_by_peer
    };
    own.min(peer)
}

impl Handshake {
    fn read(b: &[u8]) -> Self {
        let u16_at = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        Handshake {
            engine_count: u16_at(0),
            engine_id: u16_at(2),
            udp_port_base: u16_at(4),
            udp_port_count: u16_at(6),
            echo_path: UdpPair {
                src: u16_at(8),
                dst: u16_at(10),
            },
            reply_hint: UdpPair {
                src: u16_at(12),
                dst: u16_at(14),
            },
            attempt: b[16],
            max_datagram: u16_at(18),
            max_message_len: u32::from_be_bytes([b[20], b[21], b[22], b[23]]),
            token: u64::from_be_bytes(b[24..32].try_into().unwrap()),
            isn: u32::from_be_bytes(b[32..36].try_into().unwrap()),
        }
    }

    fn write(&self, b: &mut [u8]) {
        let fields = [
            self.engine_count,
            self.engine_id,
            self.udp_port_base,
            self.udp_port_count,
            self.echo_path.src,
            self.echo_path.dst,
            self.reply_hint.src,
            self.reply_hint.dst,
        ];
        for (i, v) in fields.iter().enumerate() {
            b[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
        }
        b[16] = self.attempt;
        b[17] = 0;
        b[18..20].copy_from_slice(&self.max_datagram.to_be_bytes());
        b[20..24].copy_from_slice(&self.max_message_len.to_be_bytes());
        b[24..32].copy_from_slice(&self.token.to_be_bytes());
        b[32..36].copy_from_slice(&self.isn.to_be_bytes());
        b[36..40].fill(0);
    }

    /// Semantic validity (§4): at least one engine, the engine id in range, a non-empty port pool
    /// that does not wrap past 65535 and does not contain port 0, a datagram limit that is absent
    /// or leaves room for a header and some payload, a non-zero token.
    pub fn is_valid(&self) -> bool {
        self.engine_count >= 1
            && self.engine_id < self.engine_count
            && self.udp_port_count >= 1
            && self.udp_port_base >= 1
            && u32::from(self.udp_port_base) + u32::from(self.udp_port_count) <= 65536
            && self.max_message_len >= 1
            && (self.max_datagram == 0 || usize::from(self.max_datagram) >= MIN_DATAGRAM)
            && self.token != 0
    }
}

/// A UDP (source port, destination port) pair: the part of the 4-tuple RSS-- varies (§5).
/// `UdpPair::NONE` (both zero) means "absent".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UdpPair {
    /// Our UDP source port.
    pub src: u16,
    /// The peer's UDP destination port.
    pub dst: u16,
}

impl UdpPair {
    /// No path.
    pub const NONE: UdpPair = UdpPair { src: 0, dst: 0 };
    /// Whether this is [`UdpPair::NONE`] (either port zero).
    pub fn is_none(&self) -> bool {
        self.src == 0 || self.dst == 0
    }
    /// The same path seen from the other end.
    pub fn reversed(self) -> UdpPair {
        UdpPair {
            src: self.dst,
            dst: self.src,
        }
    }
}

/// The typed form of a packet header (everything but the payload bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Packet type.
    pub packet_type: PacketType,
    /// FIRST / LAST / ACK_REQ (the HANDSHAKE bit is derived from `handshake`).
    pub flags: u8,
    /// Sender's Machnet port.
    pub src_port: u16,
    /// Receiver's Machnet port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Cumulative acknowledgement: next sequence number expected.
    pub ack: u32,
    /// Receive window, in packets.
    pub window: u32,
    /// The sender's timestamp (µs).
    pub ts_val: u32,
    /// The timestamp echoed back to the peer (µs), 0 if none.
    pub ts_ecr: u32,
    /// Length of the whole message (DATA).
    pub msg_len: u32,
    /// Selective acknowledgements (ACK).
    pub sack: SackList,
    /// Handshake block, if present.
    pub handshake: Option<Handshake>,
    /// Payload bytes after the header.
    pub payload_len: u16,
    /// The receiver's flow token (§4.1); 0 on a SYN.
    pub token: u64,
}

impl Repr {
    /// Reads and semantically validates a checked packet (§2.4).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, ParseError> {
        let packet_type = packet.packet_type();
        let raw_flags = packet.flags();
        let mut sack = SackList::new();
        for i in 0..packet.sack_count() {
            let block = packet.sack_block(i);
            // A block must be non-empty and shorter than half the sequence space.
            if block.is_empty() || block.len() >= 1 << 31 {
                return Err(ParseError::Malformed);
            }
            sack.push(block);
        }
        let handshake = packet.handshake();
        let repr = Repr {
            packet_type,
            flags: raw_flags & !flags::HANDSHAKE,
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq: packet.seq(),
            ack: packet.ack(),
            window: packet.window(),
            ts_val: packet.ts_val(),
            ts_ecr: packet.ts_ecr(),
            msg_len: packet.msg_len(),
            sack,
            handshake,
            payload_len: packet.payload_len(),
            token: packet.token(),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Per-type rules of §2.4.
    fn validate(&self) -> Result<(), ParseError> {
        use PacketType::*;
        let first = self.flags & flags::FIRST != 0;
        let last = self.flags & flags::LAST != 0;
        if self.src_port == 0 || self.dst_port == 0 {
            return Err(ParseError::Malformed);
        }
        if let Some(hs) = &self.handshake {
            if !hs.is_valid() {
                return Err(ParseError::Malformed);
            }
        }
        let sealed = self.flags & flags::SEALED != 0;
        // What the payload carries for the application: a sealed payload adds its packet number
        // and tag (§12.3).
        let Some(plain) = self.plain_len() else {
            return Err(ParseError::Malformed);
        };
        let ok = match self.packet_type {
            // A SYN may carry padding (§5.2, anti-amplification); its bytes mean nothing. A
            // sealed SYN's payload starts with the first Noise message (§12.2).
            Syn => {
                self.handshake.is_some()
                    && self.flags & (flags::FIRST | flags::LAST) == 0
                    && self.msg_len == 0
                    && self.token == 0
                    && (!sealed || usize::from(self.payload_len) >= crate::seal::MSG1_LEN)
            }
            SynAck => {
                self.handshake.is_some()
                    && usize::from(self.payload_len)
                        == if sealed { crate::seal::MSG2_LEN } else { 0 }
                    && self.flags & (flags::FIRST | flags::LAST) == 0
                    && self.msg_len == 0
            }
            Ack | Rst | Fin => {
                plain == 0 && self.flags & (flags::FIRST | flags::LAST) == 0 && self.msg_len == 0
            }
            Data => {
                let len_ok = if first {
                    self.msg_len >= 1 && plain as u32 <= self.msg_len
                } else {
                    self.msg_len == 0
                };
                // Every fragment carries at least one byte; a one-fragment message carries all.
                len_ok && plain >= 1 && (!(first && last) || plain as u32 == self.msg_len)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(ParseError::Malformed)
        }
    }

    /// Bytes of the payload that belong to the application: all of it, less the packet number
    /// and tag of a sealed non-handshake packet (§12.3). `None`: too short to be sealed.
    pub fn plain_len(&self) -> Option<usize> {
        let len = usize::from(self.payload_len);
        match self.packet_type {
            PacketType::Syn | PacketType::SynAck => Some(len),
            _ if self.flags & flags::SEALED != 0 => len.checked_sub(crate::seal::OVERHEAD),
            _ => Some(len),
        }
    }

    /// Length of the header this repr emits.
    pub fn header_len(&self) -> usize {
        HEADER_LEN
            + self.sack.len() * SACK_BLOCK_LEN
            + if self.handshake.is_some() {
                HANDSHAKE_LEN
            } else {
                0
            }
    }

    /// Total packet length: header plus `payload_len`.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + usize::from(self.payload_len)
    }

    /// Writes the header into `buf[..self.header_len()]`. The payload (`payload_len` bytes) must be
    /// written by the caller at `buf[self.header_len()..]` *before* [`finish_checksum`] is called.
    ///
    /// Panics if `buf` is shorter than [`Repr::header_len`].
    pub fn emit_header(&self, buf: &mut [u8]) {
        let b = &mut buf[..self.header_len()];
        b[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
        b[field::VERSION] = VERSION;
        b[field::TYPE] = self.packet_type as u8;
        let hs_flag = if self.handshake.is_some() {
            flags::HANDSHAKE
        } else {
            0
        };
        b[field::FLAGS] = (self.flags & !flags::HANDSHAKE) | hs_flag;
        b[field::SACK_COUNT] = self.sack.len() as u8;
        b[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        b[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        b[field::PAYLOAD_LEN].copy_from_slice(&self.payload_len.to_be_bytes());
        b[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        b[field::ACK].copy_from_slice(&self.ack.to_be_bytes());
        b[field::WINDOW].copy_from_slice(&self.window.to_be_bytes());
        b[field::TS_VAL].copy_from_slice(&self.ts_val.to_be_bytes());
        b[field::TS_ECR].copy_from_slice(&self.ts_ecr.to_be_bytes());
        b[field::MSG_LEN].copy_from_slice(&self.msg_len.to_be_bytes());
        b[field::CHECKSUM].fill(0);
        b[field::TOKEN].copy_from_slice(&self.token.to_be_bytes());
        let mut off = HEADER_LEN;
        for block in self.sack.as_slice() {
            b[off..off + 4].copy_from_slice(&block.start.to_be_bytes());
            b[off + 4..off + 8].copy_from_slice(&block.end.to_be_bytes());
            off += SACK_BLOCK_LEN;
        }
        if let Some(hs) = &self.handshake {
            hs.write(&mut b[off..off + HANDSHAKE_LEN]);
        }
    }

    /// Writes header and payload into `buf` and, if `with_checksum`, the CRC32C (§2.5).
    /// Returns the packet length. Panics if `buf` is too short or `payload.len()` disagrees with
    /// `payload_len`.
    pub fn emit(&self, buf: &mut [u8], payload: &[u8], with_checksum: bool) -> usize {
        assert_eq!(payload.len(), usize::from(self.payload_len));
        let hl = self.header_len();
        let total = hl + payload.len();
        self.emit_header(buf);
        buf[hl..total].copy_from_slice(payload);
        if with_checksum {
            finish_checksum(&mut buf[..total]);
        }
        total
    }
}

impl Repr {
    /// Writes the header followed by `payload_len` zero bytes (a padded SYN, §5.2) and, if
    /// `with_checksum`, the CRC32C. Returns the packet length. Panics if `buf` is too short.
    pub fn emit_zero_padded(&self, buf: &mut [u8], with_checksum: bool) -> usize {
        let hl = self.header_len();
        let total = hl + usize::from(self.payload_len);
        self.emit_header(buf);
        buf[hl..total].fill(0);
        if with_checksum {
            finish_checksum(&mut buf[..total]);
        }
        total
    }
}

/// The associated data of a sealed packet (§12.3): its header, `packet[..header_len]`, with the
/// checksum field zeroed (the checksum is computed after sealing), copied into `out`.
pub(crate) fn sealed_aad<'o>(
    packet: &[u8],
    header_len: usize,
    out: &'o mut [u8; MAX_HEADER_LEN],
) -> &'o [u8] {
    out[..header_len].copy_from_slice(&packet[..header_len]);
    out[field::CHECKSUM].fill(0);
    &out[..header_len]
}

/// Fills in the checksum field of a fully written packet (§2.5).
pub fn finish_checksum(packet: &mut [u8]) {
    let c = checksum::compute(packet);
    packet[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests;
