//! The input grammar of the `engine_sequence` fuzz target: a sequence of [`Step`]s decoded from
//! raw bytes with [`arbitrary::Unstructured`], and the inverse encoding used to write seeds.
//!
//! Every step starts with an opcode byte (taken modulo the number of steps); its fields follow as
//! little-endian integers (`Unstructured`'s encoding of fixed-size integers: missing bytes read as
//! zero, so any input decodes) and length-prefixed byte strings. [`Step::encode`] writes exactly
//! what [`Step::decode`] reads, so seeds are written from typed scenarios.

use arbitrary::{Result, Unstructured};

/// One of the two engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Host A's engine (10.0.0.1).
    A,
    /// Host B's engine (10.0.0.2).
    B,
}

impl Side {
    /// The other engine.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    /// 0 for A, 1 for B.
    pub fn index(self) -> usize {
        self as usize
    }
    fn from_bit(b: u8) -> Side {
        if b & 1 == 0 {
            Side::A
        } else {
            Side::B
        }
    }
}

/// Where an app's `connect` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The port the peer listens on.
    Listener,
    /// A port nobody listens on (the connect is refused).
    Closed,
    /// Any port.
    Port(u16),
}

/// A packet forged by the attacker from typed header fields (`wire::Repr`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forge {
    /// Bit 0: target engine (A/B); bit 1: spoof the peer's address (else the attacker's own);
    /// bit 2: UDP ports from the target's real pool (else the raw `udp` ports); bit 3: no checksum;
    /// bit 4: a `token` guess follows the payload (else the header token is 0).
    pub how: u8,
    /// Raw UDP (source, destination) ports, or indices into the pool.
    pub udp: (u16, u16),
    /// Packet type byte (1..=6 are valid types; taken modulo 6 plus 1).
    pub packet_type: u8,
    /// Flag bits (FIRST / LAST / ACK_REQ; the handshake bit follows `handshake`).
    pub flags: u8,
    /// Machnet ports: `ports_from` ≥ 128 takes them raw from `ports`, else from the
    /// `ports_from`-th live flow of the target (both ports known to the attacker).
    pub ports_from: u8,
    /// Raw Machnet (source, destination) ports.
    pub ports: (u16, u16),
    /// Bit 0: `seq` is an offset from the last sequence number seen on that flow (else raw);
    /// bit 1: the same for `ack`.
    pub near: u8,
    /// Sequence number or offset.
    pub seq: u32,
    /// Acknowledgement or offset.
    pub ack: u32,
    /// Receive window.
    pub window: u32,
    /// Timestamp value.
    pub ts_val: u32,
    /// Timestamp echo.
    pub ts_ecr: u32,
    /// Message length field.
    pub msg_len: u32,
    /// SACK blocks as (start offset from `ack`, length).
    pub sack: Vec<(u16, u16)>,
    /// Handshake block: (engine_count, engine_id, udp_port_base, udp_port_count, echo, hint,
    /// attempt, max_message_len, max_datagram) packed as raw fields.
    pub handshake: Option<ForgedHandshake>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Guess of the receiving flow's token (header `token`, §4.1); present iff `how` bit 4.
    /// (An off-path attacker cannot know a real one; the harness alters a guess that equals a
    /// token seen on the honest path, which libFuzzer's comparison tracing could learn.)
    pub token: u64,
}

/// Raw fields of a forged handshake block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForgedHandshake {
    /// Claimed engine count.
    pub engine_count: u16,
    /// Claimed engine id.
    pub engine_id: u16,
    /// Claimed UDP port pool base.
    pub udp_port_base: u16,
    /// Claimed UDP port pool size.
    pub udp_port_count: u16,
    /// Echo path.
    pub echo_path: (u16, u16),
    /// Reply hint.
    pub reply_hint: (u16, u16),
    /// Attempt number.
    pub attempt: u8,
    /// Claimed largest message.
    pub max_message_len: u32,
    /// Claimed largest datagram.
    pub max_datagram: u16,
    /// The sender's token (§4.1).
    pub token: u64,
    /// The sender's initial sequence number.
    pub isn: u32,
}

/// One step of a fuzz input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Deliver the honest packet in flight at `index` (modulo the count): any order.
    Deliver {
        /// Which packet.
        index: u16,
    },
    /// Lose the honest packet at `index`.
    Drop {
        /// Which packet.
        index: u16,
    },
    /// Deliver a copy of the honest packet at `index` and keep it in flight.
    Duplicate {
        /// Which packet.
        index: u16,
    },
    /// Deliver every packet in flight, in order (what they trigger waits for the next step).
    DeliverAll,
    /// Advance simulated time by `amount` units of 1 µs (`unit` 0), 1 ms (1) or 100 ms (2).
    Advance {
        /// How many units.
        amount: u16,
        /// Unit selector (modulo 3).
        unit: u8,
    },
    /// Advance time to the earliest timer of either engine.
    AdvanceToTimer,
    /// `side`'s app connects to the other host.
    Connect {
        /// Who connects.
        side: Side,
        /// Where to.
        target: Target,
    },
    /// `side`'s app sends a message of `len` generated bytes on its `flow`-th flow.
    Send {
        /// Who sends.
        side: Side,
        /// Which of its flows (modulo the count).
        flow: u8,
        /// Length of the generated part (the message carries a header too).
        len: u16,
        /// Seed of the generated bytes.
        fill: u8,
    },
    /// `side`'s app reads up to `max` messages from its `flow`-th flow.
    Recv {
        /// Who reads.
        side: Side,
        /// Which flow.
        flow: u8,
        /// At most this many messages.
        max: u8,
    },
    /// `side`'s app closes its `flow`-th flow (graceful).
    Close {
        /// Who closes.
        side: Side,
        /// Which flow.
        flow: u8,
    },
    /// `side`'s app aborts its `flow`-th flow.
    Abort {
        /// Who aborts.
        side: Side,
        /// Which flow.
        flow: u8,
    },
    /// `side`'s app discards what an ended flow still holds.
    Discard {
        /// Whose app.
        side: Side,
        /// Which flow.
        flow: u8,
    },
    /// The attacker sends a packet built from typed fields.
    Forge(Box<Forge>),
    /// The attacker sends raw bytes as a UDP datagram.
    Raw {
        /// Bit 0: target engine; bit 1: from the peer's address (else the attacker's).
        how: u8,
        /// UDP (source, destination) ports.
        udp: (u16, u16),
        /// The datagram.
        bytes: Vec<u8>,
    },
}

/// `Forge::how` bit: the packet carries a token guess.
pub const TOKEN_GUESS: u8 = 16;

/// Number of step kinds (the opcode is taken modulo this).
const STEP_KINDS: u8 = 14;

fn side(u: &mut Unstructured<'_>) -> Result<Side> {
    Ok(Side::from_bit(u.arbitrary::<u8>()?))
}

/// `len` bytes, or as many as are left.
fn bytes<'a>(u: &mut Unstructured<'a>, len: usize) -> Result<&'a [u8]> {
    let n = len.min(u.len());
    u.bytes(n)
}

impl Step {
    /// Reads one step. Never fails on short input (missing bytes read as zero).
    pub fn decode(u: &mut Unstructured<'_>) -> Result<Step> {
        let op = u.arbitrary::<u8>()? % STEP_KINDS;
        Ok(match op {
            0 => Step::Deliver {
                index: u.arbitrary()?,
            },
            1 => Step::Drop {
                index: u.arbitrary()?,
            },
            2 => Step::Duplicate {
                index: u.arbitrary()?,
            },
            3 => Step::DeliverAll,
            4 => Step::Advance {
                amount: u.arbitrary()?,
                unit: u.arbitrary()?,
            },
            5 => Step::AdvanceToTimer,
            6 => {
                let side = side(u)?;
                let sel = u.arbitrary::<u8>()?;
                let port = u.arbitrary::<u16>()?;
                let target = match sel % 4 {
                    0 | 1 => Target::Listener,
                    2 => Target::Closed,
                    _ => Target::Port(port),
                };
                Step::Connect { side, target }
            }
            7 => Step::Send {
                side: side(u)?,
                flow: u.arbitrary()?,
                len: u.arbitrary()?,
                fill: u.arbitrary()?,
            },
            8 => Step::Recv {
                side: side(u)?,
                flow: u.arbitrary()?,
                max: u.arbitrary()?,
            },
            9 => Step::Close {
                side: side(u)?,
                flow: u.arbitrary()?,
            },
            10 => Step::Abort {
                side: side(u)?,
                flow: u.arbitrary()?,
            },
            11 => Step::Discard {
                side: side(u)?,
                flow: u.arbitrary()?,
            },
            12 => Step::Forge(Box::new(Forge::decode(u)?)),
            _ => {
                let how = u.arbitrary()?;
                let udp = (u.arbitrary()?, u.arbitrary()?);
                let len = u.arbitrary::<u16>()? % 2048;
                let bytes = bytes(u, usize::from(len))?.to_vec();
                Step::Raw { how, udp, bytes }
            }
        })
    }

    /// Writes the bytes [`Step::decode`] reads back as this step.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let side_byte = |s: Side| s as u8;
        match self {
            Step::Deliver { index } => {
                out.push(0);
                out.extend(index.to_le_bytes());
            }
            Step::Drop { index } => {
                out.push(1);
                out.extend(index.to_le_bytes());
            }
            Step::Duplicate { index } => {
                out.push(2);
                out.extend(index.to_le_bytes());
            }
            Step::DeliverAll => out.push(3),
            Step::Advance { amount, unit } => {
                out.push(4);
                out.extend(amount.to_le_bytes());
                out.push(*unit);
            }
            Step::AdvanceToTimer => out.push(5),
            Step::Connect { side, target } => {
                out.push(6);
                out.push(side_byte(*side));
                let (sel, port) = match target {
                    Target::Listener => (0u8, 0u16),
                    Target::Closed => (2, 0),
                    Target::Port(p) => (3, *p),
                };
                out.push(sel);
                out.extend(port.to_le_bytes());
            }
            Step::Send {
                side,
                flow,
                len,
                fill,
            } => {
                out.extend([7, side_byte(*side), *flow]);
                out.extend(len.to_le_bytes());
                out.push(*fill);
            }
            Step::Recv { side, flow, max } => out.extend([8, side_byte(*side), *flow, *max]),
            Step::Close { side, flow } => out.extend([9, side_byte(*side), *flow]),
            Step::Abort { side, flow } => out.extend([10, side_byte(*side), *flow]),
            Step::Discard { side, flow } => out.extend([11, side_byte(*side), *flow]),
            Step::Forge(f) => {
                out.push(12);
                f.encode(out);
            }
            Step::Raw { how, udp, bytes } => {
                assert!(
                    bytes.len() < 2048,
                    "raw datagrams are shorter than 2048 bytes"
                );
                out.push(13);
                out.push(*how);
                out.extend(udp.0.to_le_bytes());
                out.extend(udp.1.to_le_bytes());
                out.extend((bytes.len() as u16).to_le_bytes());
                out.extend(bytes);
            }
        }
    }
}

impl Forge {
    fn decode(u: &mut Unstructured<'_>) -> Result<Forge> {
        let mut f = Forge {
            how: u.arbitrary()?,
            udp: (u.arbitrary()?, u.arbitrary()?),
            packet_type: u.arbitrary()?,
            flags: u.arbitrary()?,
            ports_from: u.arbitrary()?,
            ports: (u.arbitrary()?, u.arbitrary()?),
            near: u.arbitrary()?,
            seq: u.arbitrary()?,
            ack: u.arbitrary()?,
            window: u.arbitrary()?,
            ts_val: u.arbitrary()?,
            ts_ecr: u.arbitrary()?,
            msg_len: u.arbitrary()?,
            ..Forge::default()
        };
        let shape = u.arbitrary::<u8>()?;
        for _ in 0..(shape & 7) % 5 {
            f.sack.push((u.arbitrary()?, u.arbitrary()?));
        }
        if shape & 8 != 0 {
            f.handshake = Some(ForgedHandshake {
                engine_count: u.arbitrary()?,
                engine_id: u.arbitrary()?,
                udp_port_base: u.arbitrary()?,
                udp_port_count: u.arbitrary()?,
                echo_path: (u.arbitrary()?, u.arbitrary()?),
                reply_hint: (u.arbitrary()?, u.arbitrary()?),
                attempt: u.arbitrary()?,
                max_message_len: u.arbitrary()?,
                max_datagram: u.arbitrary()?,
                token: u.arbitrary()?,
                isn: u.arbitrary()?,
            });
        }
        let len = u.arbitrary::<u16>()? % 1024;
        f.payload = bytes(u, usize::from(len))?.to_vec();
        if f.how & TOKEN_GUESS != 0 {
            f.token = u.arbitrary()?;
        }
        Ok(f)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.sack.len() <= 4 && self.payload.len() < 1024);
        out.push(self.how);
        for p in [self.udp.0, self.udp.1] {
            out.extend(p.to_le_bytes());
        }
        out.extend([self.packet_type, self.flags, self.ports_from]);
        for p in [self.ports.0, self.ports.1] {
            out.extend(p.to_le_bytes());
        }
        out.push(self.near);
        for v in [
            self.seq,
            self.ack,
            self.window,
            self.ts_val,
            self.ts_ecr,
            self.msg_len,
        ] {
            out.extend(v.to_le_bytes());
        }
        out.push(self.sack.len() as u8 | if self.handshake.is_some() { 8 } else { 0 });
        for (a, b) in &self.sack {
            out.extend(a.to_le_bytes());
            out.extend(b.to_le_bytes());
        }
        if let Some(h) = &self.handshake {
            for v in [
                h.engine_count,
                h.engine_id,
                h.udp_port_base,
                h.udp_port_count,
                h.echo_path.0,
                h.echo_path.1,
                h.reply_hint.0,
                h.reply_hint.1,
            ] {
                out.extend(v.to_le_bytes());
            }
            out.push(h.attempt);
            out.extend(h.max_message_len.to_le_bytes());
            out.extend(h.max_datagram.to_le_bytes());
            out.extend(h.token.to_le_bytes());
            out.extend(h.isn.to_le_bytes());
        }
        out.extend((self.payload.len() as u16).to_le_bytes());
        out.extend(&self.payload);
        if self.how & TOKEN_GUESS != 0 {
            out.extend(self.token.to_le_bytes());
        } else {
            assert_eq!(self.token, 0, "a token guess needs `how` bit 4");
        }
    }
}

/// Decodes a whole input into steps (at most `max` of them).
pub fn decode_all(data: &[u8], max: usize) -> Vec<Step> {
    let mut u = Unstructured::new(data);
    let mut steps = Vec::new();
    while !u.is_empty() && steps.len() < max {
        match Step::decode(&mut u) {
            Ok(s) => steps.push(s),
            Err(_) => break,
        }
    }
    steps
}

/// Encodes steps into an input that [`decode_all`] reads back as the same steps.
pub fn encode_all(steps: &[Step]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in steps {
        s.encode(&mut out);
    }
    out
}
