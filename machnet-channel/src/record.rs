//! Records exchanged over a channel's rings (docs/CHANNEL.md §3.2).

/// Bytes of a record header.
pub const RECORD_HEADER_LEN: usize = 16;

/// What a record means. Requests flow app → sidecar, notifications sidecar → app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    // --- app → sidecar ---
    /// Open a flow. Payload: [`ConnectRequest`]. `aux` = request id, echoed in the answer.
    Connect = 1,
    /// Send one message on `flow`. Payload: the message.
    Send = 2,
    /// Graceful close of `flow` (FIN after queued messages).
    Close = 3,
    /// Abort `flow` (RST).
    Abort = 4,
    // --- sidecar → app ---
    /// A `Connect` succeeded. `aux` = request id; `flow` = the new flow; payload: [`FlowInfo`].
    Connected = 64,
    /// A `Connect` failed. `aux` = request id; `flags` = [`crate::CloseCode`].
    ConnectFailed = 65,
    /// A listener of this channel accepted `flow`. Payload: [`FlowInfo`].
    Accepted = 66,
    /// One message received on `flow`. Payload: the message.
    Message = 67,
    /// The peer closed `flow`: no message follows.
    PeerClosed = 68,
    /// `flow` is gone; `flags` = [`crate::CloseCode`].
    Closed = 69,
    /// A request on `flow` failed; `flags` = [`crate::CloseCode`], `aux` = the kind of
    /// the failed request.
    RequestFailed = 70,
}

impl RecordKind {
    /// The kind with wire value `v`, or `None` for a value no kind has.
    pub fn from_u8(v: u8) -> Option<Self> {
        use RecordKind::*;
        Some(match v {
            1 => Connect,
            2 => Send,
            3 => Close,
            4 => Abort,
            64 => Connected,
            65 => ConnectFailed,
            66 => Accepted,
            67 => Message,
            68 => PeerClosed,
            69 => Closed,
            70 => RequestFailed,
            _ => return None,
        })
    }

    /// Whether apps may write this kind (the sidecar rejects the others from apps).
    pub fn is_request(self) -> bool {
        (self as u8) < 64
    }
}

/// The 16-byte record header (little-endian: both ends share one machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload bytes following the header.
    pub len: u32,
    /// What the record means.
    pub kind: RecordKind,
    /// A [`crate::CloseCode`] for `ConnectFailed`, `Closed` and `RequestFailed`; 0 otherwise.
    pub flags: u8,
    /// Channel-local flow handle (0 = none).
    pub flow: u32,
    /// Request id or other kind-specific value.
    pub aux: u32,
}

impl RecordHeader {
    /// A header of `kind` on `flow` with no payload and zero `flags` and `aux`.
    pub fn new(kind: RecordKind, flow: u32) -> Self {
        RecordHeader {
            len: 0,
            kind,
            flags: 0,
            flow,
            aux: 0,
        }
    }

    /// The header's 16 bytes as they sit in the ring (reserved bytes zero).
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4] = self.kind as u8;
        b[5] = self.flags;
        b[8..12].copy_from_slice(&self.flow.to_le_bytes());
        b[12..16].copy_from_slice(&self.aux.to_le_bytes());
        b
    }

    /// Parses untrusted header bytes. Fails on an unknown kind or non-zero reserved bytes; does
    /// not check `len` or whether the kind suits the direction.
    pub fn decode(b: &[u8; RECORD_HEADER_LEN]) -> Result<Self, &'static str> {
        let kind = RecordKind::from_u8(b[4]).ok_or("unknown record kind")?;
        if b[6] != 0 || b[7] != 0 {
            return Err("reserved header bytes are not zero");
        }
        Ok(RecordHeader {
            len: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            kind,
            flags: b[5],
            flow: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            aux: u32::from_le_bytes(b[12..16].try_into().unwrap()),
        })
    }
}

/// Payload of a `Connect` request: remote IPv4 address and Machnet port (6 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Address of the remote sidecar.
    pub remote_ip: std::net::Ipv4Addr,
    /// The Machnet port the remote application listens on.
    pub remote_port: u16,
}

impl ConnectRequest {
    /// Encoded size in bytes.
    pub const LEN: usize = 6;

    /// The payload bytes: address octets, then the port little-endian.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&self.remote_ip.octets());
        b[4..6].copy_from_slice(&self.remote_port.to_le_bytes());
        b
    }

    /// Parses an untrusted payload; `None` unless it is exactly [`Self::LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        Some(ConnectRequest {
            remote_ip: std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            remote_port: u16::from_le_bytes([b[4], b[5]]),
        })
    }
}

/// Payload of `Connected` / `Accepted`: the flow's 4-tuple (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    /// This sidecar's address.
    pub local_ip: std::net::Ipv4Addr,
    /// This end's Machnet port (the listening port for an accepted flow, else an ephemeral one).
    pub local_port: u16,
    /// The remote sidecar's address.
    pub remote_ip: std::net::Ipv4Addr,
    /// The remote end's Machnet port.
    pub remote_port: u16,
}

impl FlowInfo {
    /// Encoded size in bytes.
    pub const LEN: usize = 12;

    /// The payload bytes: local address and port, then remote address and port (ports
    /// little-endian).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&self.local_ip.octets());
        b[4..6].copy_from_slice(&self.local_port.to_le_bytes());
        b[6..10].copy_from_slice(&self.remote_ip.octets());
        b[10..12].copy_from_slice(&self.remote_port.to_le_bytes());
        b
    }

    /// Parses an untrusted payload; `None` unless it is exactly [`Self::LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        Some(FlowInfo {
            local_ip: std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            local_port: u16::from_le_bytes([b[4], b[5]]),
            remote_ip: std::net::Ipv4Addr::new(b[6], b[7], b[8], b[9]),
            remote_port: u16::from_le_bytes([b[10], b[11]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejections() {
        let h = RecordHeader {
            len: 77,
            kind: RecordKind::Message,
            flags: 3,
            flow: 9,
            aux: 0xdead,
        };
        assert_eq!(RecordHeader::decode(&h.encode()).unwrap(), h);
        let mut b = h.encode();
        b[4] = 5;
        assert!(RecordHeader::decode(&b).is_err());
        let mut b = h.encode();
        b[7] = 1;
        assert!(RecordHeader::decode(&b).is_err());
        assert!(RecordKind::Send.is_request() && !RecordKind::Message.is_request());
    }

    #[test]
    fn payload_codecs_round_trip() {
        let c = ConnectRequest {
            remote_ip: [10, 0, 0, 2].into(),
            remote_port: 888,
        };
        assert_eq!(ConnectRequest::decode(&c.encode()), Some(c));
        assert_eq!(ConnectRequest::decode(&[0; 5]), None);
        let f = FlowInfo {
            local_ip: [1, 2, 3, 4].into(),
            local_port: 5,
            remote_ip: [6, 7, 8, 9].into(),
            remote_port: 10,
        };
        assert_eq!(FlowInfo::decode(&f.encode()), Some(f));
    }
}
