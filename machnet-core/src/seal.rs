//! Optional encryption in transit (PROTOCOL.md §12): a Noise IK handshake carried by the SYN and
//! SYN-ACK, then every packet of the flow sealed with AES-128-GCM under the keys it produced.
//!
//! The handshake is `Noise_IK_25519_AESGCM_SHA256` through the `snow` crate; the per-packet AEAD
//! is `ring`'s AES-128-GCM (TLS 1.3's and QUIC's default suite; 20 % faster here than
//! AES-256-GCM, with the same usage limit). Nothing here implements a cryptographic primitive.
//!
//! A sealed packet's payload is `packet number (8) ‖ ciphertext ‖ tag (16)`; the nonce is the
//! packet number (unique per direction and key: it counts every packet the flow sends, so a
//! retransmission is sealed anew), the associated data is the whole header with the checksum
//! field zeroed, so an on-path attacker can change no field of a sealed packet undetected.

use std::fmt;
use std::net::Ipv4Addr;

use ring::aead::{self, LessSafeKey, UnboundKey, AES_128_GCM};

use crate::wire::{self, flags, Repr};

/// The Noise protocol every encrypted handshake uses.
pub const NOISE_PATTERN: &str = "Noise_IK_25519_AESGCM_SHA256";
/// Length of an X25519 key (private or public).
pub const KEY_LEN: usize = 32;
/// Length of a stateless-reset token (§12.4).
pub const RESET_TOKEN_LEN: usize = 16;
/// Length of the first handshake message (the SYN's payload): `e`, encrypted `s`, and the
/// client's reset token as encrypted payload.
pub const MSG1_LEN: usize = 32 + (32 + 16) + (RESET_TOKEN_LEN + 16);
/// Length of the second handshake message (the SYN-ACK's payload): `e` and the server's reset
/// token as encrypted payload.
pub const MSG2_LEN: usize = 32 + (RESET_TOKEN_LEN + 16);
/// Length of the retry cookie a sealed SYN carries after the first Noise message (§12.5):
/// token (8) and ISN (4) of the server's stateless answer; zeros when it has none.
pub const RETRY_COOKIE_LEN: usize = 12;
/// Length of the packet number that starts a sealed payload.
pub const PN_LEN: usize = 8;
/// Length of the AEAD tag that ends a sealed payload.
pub const TAG_LEN: usize = 16;
/// Bytes sealing adds to a packet's payload.
pub const OVERHEAD: usize = PN_LEN + TAG_LEN;

/// Why a configured key or peer is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 32 bytes.
    #[error("a key must be {KEY_LEN} bytes, got {0}")]
    Length(usize),
}

/// Why a handshake did not produce keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The message is not a valid handshake message for this flow (wrong key, tampered, or its
    /// prologue — ports, token, ISN — does not match).
    #[error("handshake message failed to authenticate")]
    Rejected,
    /// The peer authenticated with a static key that is not in the allow-list for its address.
    #[error("peer key not in the allow-list")]
    NotAllowed,
}

/// An X25519 key pair. The private half is wiped from memory when the key is dropped.
#[derive(Clone, PartialEq, Eq, zeroize::ZeroizeOnDrop)]
pub struct StaticKey {
    private: [u8; KEY_LEN],
    #[zeroize(skip)]
    public: [u8; KEY_LEN],
}

impl StaticKey {
    /// A fresh random key pair (from the operating system's generator).
    pub fn generate() -> StaticKey {
        let kp = builder()
            .generate_keypair()
            .expect("the default resolver generates X25519 key pairs");
        StaticKey::from_private(&kp.private).expect("a generated key is valid")
    }

    /// The key pair of a private key.
    pub fn from_private(private: &[u8]) -> Result<StaticKey, KeyError> {
        let private: [u8; KEY_LEN] = private
            .try_into()
            .map_err(|_| KeyError::Length(private.len()))?;
        let public = derive_public(&private);
        Ok(StaticKey { private, public })
    }

    /// The public half, to give to peers.
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.public
    }

    /// The private half, to write to a key file (`machnet keygen`). Handle with care: never log
    /// it, and wipe copies.
    pub fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }
}

/// X25519 public key of `private`: the Diffie-Hellman of `private` with the curve's base point,
/// computed by snow's resolver.
fn derive_public(private: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    use snow::resolvers::CryptoResolver;
    let mut dh = snow::resolvers::DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("the default resolver has X25519");
    dh.set(private);
    let mut public = [0u8; KEY_LEN];
    public.copy_from_slice(dh.pubkey());
    public
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("StaticKey")
            .field("public", &hex(&self.public))
            .finish_non_exhaustive()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A peer this host exchanges encrypted flows with: its address and static public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerKey {
    /// The peer host's address. Its flows must come from it; ours to it use `public`.
    pub ip: Ipv4Addr,
    /// The peer's static public key.
    pub public: [u8; KEY_LEN],
}

/// A stateless-reset token (§12.4): proves an RST comes from the host that held the flow.
pub(crate) type ResetToken = [u8; RESET_TOKEN_LEN];

/// The encryption configuration of a host: its static key and the allow-list of peers.
#[derive(Debug, Clone)]
pub struct Encryption {
    key: StaticKey,
    peers: Vec<PeerKey>,
    /// Derived from the static key, so every engine of the host — also after a restart — can
    /// compute the reset token of any flow the host had (§12.4).
    reset_key: ring::hmac::Key,
}

impl PartialEq for Encryption {
    fn eq(&self, other: &Self) -> bool {
        // The reset key is a function of the static key.
        self.key == other.key && self.peers == other.peers
    }
}

impl Eq for Encryption {}

impl Encryption {
    /// Encryption with `key`, talking only to `peers`.
    pub fn new(key: StaticKey, peers: Vec<PeerKey>) -> Encryption {
        let reset_key =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"machnet/2 stateless reset")
                .extract(&key.private)
                .expand(&[b"reset key"], ring::hmac::HMAC_SHA256)
                .expect("one HMAC key is a valid HKDF output length")
                .into();
        Encryption {
            key,
            peers,
            reset_key,
        }
    }

    /// The reset token of our flow with `local_port`, to `remote_ip:remote_port`, whose token
    /// (the one the peer puts in every packet to us) is `rx_token`: a keyed MAC, so only this
    /// host can compute it, and it needs nothing but what a packet of the flow carries.
    pub(crate) fn reset_token(
        &self,
        local_port: u16,
        remote_ip: Ipv4Addr,
        remote_port: u16,
        rx_token: u64,
    ) -> ResetToken {
        let mut input = [0u8; 16];
        input[..2].copy_from_slice(&local_port.to_be_bytes());
        input[2..6].copy_from_slice(&remote_ip.octets());
        input[6..8].copy_from_slice(&remote_port.to_be_bytes());
        input[8..].copy_from_slice(&rx_token.to_be_bytes());
        let tag = ring::hmac::sign(&self.reset_key, &input);
        let mut token = [0u8; RESET_TOKEN_LEN];
        token.copy_from_slice(&tag.as_ref()[..RESET_TOKEN_LEN]);
        token
    }

    /// This host's public key.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.key.public
    }

    /// The allow-list.
    pub fn peers(&self) -> &[PeerKey] {
        &self.peers
    }

    /// The key our flows to `ip` expect it to prove, if it is in the allow-list.
    pub fn peer_key(&self, ip: Ipv4Addr) -> Option<&[u8; KEY_LEN]> {
        self.peers.iter().find(|p| p.ip == ip).map(|p| &p.public)
    }

    fn allows(&self, ip: Ipv4Addr, public: &[u8]) -> bool {
        self.peers.iter().any(|p| p.ip == ip && p.public == public)
    }
}

fn builder() -> snow::Builder<'static> {
    snow::Builder::new(NOISE_PATTERN.parse().expect("a valid Noise pattern"))
}

/// What both ends bind their handshake to (Noise prologue): the flow's Machnet ports and the
/// client's token and ISN from the SYN's handshake block, so a handshake message cannot be
/// moved to another flow or attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding {
    pub(crate) client_port: u16,
    pub(crate) server_port: u16,
    pub(crate) client_token: u64,
    pub(crate) client_isn: u32,
}

impl Binding {
    fn prologue(&self) -> [u8; 26] {
        let mut p = [0u8; 26];
        p[..10].copy_from_slice(b"machnet/2 ");
        p[10..12].copy_from_slice(&self.client_port.to_be_bytes());
        p[12..14].copy_from_slice(&self.server_port.to_be_bytes());
        p[14..22].copy_from_slice(&self.client_token.to_be_bytes());
        p[22..26].copy_from_slice(&self.client_isn.to_be_bytes());
        p
    }
}

/// The client's half of a handshake in progress: the first message (sent in every SYN of the
/// flow) and the state that reads the server's answer.
pub(crate) struct Initiator {
    state: Box<snow::HandshakeState>,
    msg1: [u8; MSG1_LEN],
}

impl Initiator {
    /// Starts a handshake with the server whose static key is `server`; the first message
    /// carries (encrypted) our flow's reset token.
    pub(crate) fn start(
        enc: &Encryption,
        server: &[u8; KEY_LEN],
        binding: Binding,
        reset: &ResetToken,
    ) -> Initiator {
        let prologue = binding.prologue();
        let mut state = builder()
            .local_private_key(&enc.key.private)
            .remote_public_key(server)
            .prologue(&prologue)
            .build_initiator()
            .expect("valid keys and pattern");
        let mut msg1 = [0u8; MSG1_LEN];
        let n = state
            .write_message(reset, &mut msg1)
            .expect("the first IK message fits");
        debug_assert_eq!(n, MSG1_LEN);
        Initiator {
            state: Box::new(state),
            msg1,
        }
    }

    /// The first handshake message.
    pub(crate) fn msg1(&self) -> &[u8; MSG1_LEN] {
        &self.msg1
    }

    /// Reads the server's answer; the flow's keys. The state is used up either way: a SYN-ACK
    /// reaches the handshake only with the client's token (PROTOCOL.md §4.1), so an answer that
    /// fails here came from a server with another key or was changed on path, and the flow ends.
    /// Also returns the server's reset token.
    pub(crate) fn finish(mut self, msg2: &[u8]) -> Result<(Sealer, ResetToken), HandshakeError> {
        let mut payload = [0u8; MSG2_LEN];
        let n = self
            .state
            .read_message(msg2, &mut payload)
            .map_err(|_| HandshakeError::Rejected)?;
        let reset = payload[..n]
            .try_into()
            .map_err(|_| HandshakeError::Rejected)?;
        let (i2r, r2i) = self.state.dangerously_get_raw_split();
        Ok((Sealer::new(&i2r, &r2i), reset))
    }
}

/// What the server's side of a handshake produced.
pub(crate) struct Response {
    /// The flow's packet protection.
    pub(crate) sealer: Sealer,
    /// The message every SYN-ACK of the flow carries.
    pub(crate) msg2: [u8; MSG2_LEN],
    /// The client's reset token.
    pub(crate) client_reset: ResetToken,
}

/// The server's side: checks the client's first message and writes the answer, which carries
/// (encrypted) our flow's reset token.
pub(crate) fn respond(
    enc: &Encryption,
    client_ip: Ipv4Addr,
    binding: Binding,
    msg1: &[u8],
    reset: &ResetToken,
) -> Result<Response, HandshakeError> {
    let prologue = binding.prologue();
    let mut state = builder()
        .local_private_key(&enc.key.private)
        .prologue(&prologue)
        .build_responder()
        .expect("valid keys and pattern");
    let mut payload = [0u8; MSG1_LEN];
    let n = state
        .read_message(msg1, &mut payload)
        .map_err(|_| HandshakeError::Rejected)?;
    let client_reset: ResetToken = payload[..n]
        .try_into()
        .map_err(|_| HandshakeError::Rejected)?;
    let client = state.get_remote_static().ok_or(HandshakeError::Rejected)?;
    if !enc.allows(client_ip, client) {
        return Err(HandshakeError::NotAllowed);
    }
    let mut msg2 = [0u8; MSG2_LEN];
    let n = state
        .write_message(reset, &mut msg2)
        .map_err(|_| HandshakeError::Rejected)?;
    debug_assert_eq!(n, MSG2_LEN);
    let (i2r, r2i) = state.dangerously_get_raw_split();
    Ok(Response {
        sealer: Sealer::new(&r2i, &i2r),
        msg2,
        client_reset,
    })
}

/// A retry cookie (§12.5): the `(token, isn)` of a stateless SYN-ACK, echoed in the SYN.
pub(crate) type RetryCookie = (u64, u32);

/// The retry cookie a sealed SYN's payload carries after its first Noise message, if any.
pub(crate) fn retry_cookie(syn_payload: &[u8]) -> Option<RetryCookie> {
    let field = syn_payload.get(MSG1_LEN..MSG1_LEN + RETRY_COOKIE_LEN)?;
    let token = u64::from_be_bytes(field[..8].try_into().expect("8 bytes"));
    let isn = u32::from_be_bytes(field[8..].try_into().expect("4 bytes"));
    (token != 0).then_some((token, isn))
}

/// Writes `cookie` where [`retry_cookie`] reads it.
pub(crate) fn write_retry_cookie(syn_payload: &mut [u8], cookie: RetryCookie) {
    let field = &mut syn_payload[MSG1_LEN..MSG1_LEN + RETRY_COOKIE_LEN];
    field[..8].copy_from_slice(&cookie.0.to_be_bytes());
    field[8..].copy_from_slice(&cookie.1.to_be_bytes());
}

/// Whether the sealed payload `body` of an RST that failed to open is the peer's stateless reset
/// (§12.4): it ends with the reset token the peer gave in its handshake.
pub(crate) fn is_stateless_reset(peer_reset: &ResetToken, body: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    body.len() == OVERHEAD && bool::from(body[PN_LEN..].ct_eq(&peer_reset[..]))
}

/// A sealed packet failed to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenError;

/// Packets one key seals before the next takes over (§12.3): well inside AES-GCM's
/// confidentiality limit of 2^23 packets (RFC 9001 §6.6). The key of a packet follows from its
/// packet number, so a key update needs no signalling.
pub(crate) const KEY_EPOCH_PACKETS: u64 = 1 << 22;

/// One direction's keys: the traffic secret from the handshake and the key of the newest epoch
/// in use (and, receiving, the one before it, for packets reordered across an update).
struct DirectionKeys {
    secret: ring::hkdf::Prk,
    epoch: u64,
    key: LessSafeKey,
    previous: Option<(u64, LessSafeKey)>,
}

impl DirectionKeys {
    fn new(secret: &[u8; 32]) -> DirectionKeys {
        // The handshake's split output is already a uniformly random key.
        let secret = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, secret);
        let key = epoch_key(&secret, 0);
        DirectionKeys {
            secret,
            epoch: 0,
            key,
            previous: None,
        }
    }
}

/// The AES-128-GCM key of `epoch`: HKDF-Expand of the traffic secret.
fn epoch_key(secret: &ring::hkdf::Prk, epoch: u64) -> LessSafeKey {
    let epoch = epoch.to_be_bytes();
    let info = [&b"machnet/2 packet key"[..], &epoch[..]];
    let okm = secret
        .expand(&info, &AES_128_GCM)
        .expect("an AES-128 key is a valid HKDF output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// One flow's packet protection, both directions.
pub(crate) struct Sealer {
    tx: DirectionKeys,
    rx: DirectionKeys,
    next_pn: u64,
}

impl Sealer {
    fn new(tx: &[u8; 32], rx: &[u8; 32]) -> Sealer {
        Sealer {
            tx: DirectionKeys::new(tx),
            rx: DirectionKeys::new(rx),
            next_pn: 0,
        }
    }

    /// Seals `body[PN_LEN .. PN_LEN + plain_len]` in place: writes the packet number before it
    /// and the tag after it. `body` must hold `plain_len + OVERHEAD` bytes.
    pub(crate) fn seal(&mut self, header: &[u8], body: &mut [u8], plain_len: usize) {
        let pn = self.next_pn;
        self.next_pn += 1;
        let epoch = pn / KEY_EPOCH_PACKETS;
        if epoch != self.tx.epoch {
            self.tx.key = epoch_key(&self.tx.secret, epoch);
            self.tx.epoch = epoch;
        }
        body[..PN_LEN].copy_from_slice(&pn.to_be_bytes());
        let (text, tag_out) = body[PN_LEN..].split_at_mut(plain_len);
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce(pn), aead::Aad::from(header), text)
            .expect("AES-GCM seals any packet-sized input");
        tag_out[..TAG_LEN].copy_from_slice(tag.as_ref());
    }

    /// Opens a sealed payload in place; the plaintext. `header` is the packet's header with the
    /// checksum field zeroed. A packet of a newer key epoch moves the receive keys forward only
    /// once it authenticates, so forgeries cannot make us drop the keys in use.
    pub(crate) fn open<'b>(
        &mut self,
        header: &[u8],
        body: &'b mut [u8],
    ) -> Result<&'b mut [u8], OpenError> {
        if body.len() < OVERHEAD {
            return Err(OpenError);
        }
        let pn = u64::from_be_bytes(body[..PN_LEN].try_into().expect("8 bytes"));
        let epoch = pn / KEY_EPOCH_PACKETS;
        let aad = aead::Aad::from(header);
        let text = &mut body[PN_LEN..];
        let rx = &mut self.rx;
        let len = match &rx.previous {
            _ if epoch == rx.epoch => rx.key.open_in_place(nonce(pn), aad, text),
            Some((e, key)) if *e == epoch => key.open_in_place(nonce(pn), aad, text),
            _ => {
                let key = epoch_key(&rx.secret, epoch);
                // Authenticate before keeping anything.
                let opened = key.open_in_place(nonce(pn), aad, text);
                if opened.is_ok() && epoch > rx.epoch {
                    let old = std::mem::replace(&mut rx.key, key);
                    rx.previous = Some((rx.epoch, old));
                    rx.epoch = epoch;
                }
                opened
            }
        }
        .map_err(|_| OpenError)?
        .len();
        Ok(&mut body[PN_LEN..PN_LEN + len])
    }

    #[cfg(test)]
    fn skip_to(&mut self, pn: u64) {
        self.next_pn = pn;
    }
}

/// Writes `repr` into `buf` with `plain` sealed as its payload (§12.3) and, if `with_checksum`,
/// the CRC32C over the sealed packet. Sets the SEALED flag and the payload length. Returns the
/// packet length.
pub(crate) fn emit_sealed(
    repr: &mut Repr,
    buf: &mut [u8],
    plain: &[u8],
    sealer: &mut Sealer,
    with_checksum: bool,
) -> usize {
    repr.flags |= flags::SEALED;
    repr.payload_len = u16::try_from(plain.len() + OVERHEAD).expect("fragments fit a datagram");
    let hl = repr.header_len();
    let total = hl + plain.len() + OVERHEAD;
    // The header is emitted with a zero checksum field: exactly the associated data.
    repr.emit_header(buf);
    let (header, body) = buf[..total].split_at_mut(hl);
    body[PN_LEN..PN_LEN + plain.len()].copy_from_slice(plain);
    sealer.seal(header, body, plain.len());
    if with_checksum {
        wire::finish_checksum(&mut buf[..total]);
    }
    total
}

fn nonce(pn: u64) -> aead::Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&pn.to_be_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn binding() -> Binding {
        Binding {
            client_port: 49152,
            server_port: 7000,
            client_token: 0x1234_5678_9abc_def0,
            client_isn: 77,
        }
    }

    /// Client on A, server on B, each allowing the other.
    fn pair() -> (Encryption, Encryption) {
        let (ka, kb) = (StaticKey::generate(), StaticKey::generate());
        let a = Encryption::new(
            ka.clone(),
            vec![PeerKey {
                ip: B,
                public: kb.public(),
            }],
        );
        let b = Encryption::new(
            kb,
            vec![PeerKey {
                ip: A,
                public: ka.public(),
            }],
        );
        (a, b)
    }

    fn handshake(a: &Encryption, b: &Encryption) -> Result<(Sealer, Sealer), HandshakeError> {
        let init = Initiator::start(a, a.peer_key(B).unwrap(), binding(), &[1; 16]);
        let r = respond(b, A, binding(), init.msg1(), &[2; 16])?;
        assert_eq!(
            r.client_reset, [1; 16],
            "the client's reset token reaches the server"
        );
        let (client, server_reset) = init.finish(&r.msg2)?;
        assert_eq!(
            server_reset, [2; 16],
            "the server's reset token reaches the client"
        );
        Ok((client, r.sealer))
    }

    #[test]
    fn public_key_matches_what_snow_generates() {
        let kp = builder().generate_keypair().unwrap();
        assert_eq!(
            StaticKey::from_private(&kp.private)
                .unwrap()
                .public()
                .to_vec(),
            kp.public
        );
        assert_eq!(StaticKey::from_private(&[1; 31]), Err(KeyError::Length(31)));
    }

    #[test]
    fn handshake_gives_both_ends_matching_keys_both_ways() {
        let (a, b) = pair();
        let (mut client, mut server) = handshake(&a, &b).unwrap();
        let roundtrip = |tx: &mut Sealer, rx: &mut Sealer| {
            let header = b"header bytes";
            let mut body = vec![0u8; 5 + OVERHEAD];
            body[PN_LEN..PN_LEN + 5].copy_from_slice(b"hello");
            tx.seal(header, &mut body, 5);
            assert_ne!(&body[PN_LEN..PN_LEN + 5], b"hello");
            assert_eq!(rx.open(header, &mut body.clone()).unwrap(), b"hello");
        };
        roundtrip(&mut client, &mut server);
        roundtrip(&mut server, &mut client);
    }

    #[test]
    fn keys_change_every_epoch_and_the_receiver_follows_also_out_of_order() {
        let (a, b) = pair();
        let (mut client, mut server) = handshake(&a, &b).unwrap();
        let header = b"h";
        let seal_at = |c: &mut Sealer, pn: u64| {
            c.skip_to(pn);
            let mut body = vec![0u8; 4 + OVERHEAD];
            body[PN_LEN..PN_LEN + 4].copy_from_slice(&(pn as u32).to_be_bytes());
            c.seal(header, &mut body, 4);
            body
        };
        let last_of_0 = seal_at(&mut client, KEY_EPOCH_PACKETS - 1);
        let first_of_1 = seal_at(&mut client, KEY_EPOCH_PACKETS);
        let first_of_3 = seal_at(&mut client, 3 * KEY_EPOCH_PACKETS);
        // A forgery in a future epoch does not move the receiver.
        let mut forged = first_of_3.clone();
        forged[PN_LEN] ^= 1;
        assert_eq!(server.open(header, &mut forged), Err(OpenError));
        assert_eq!(server.rx.epoch, 0);
        for (body, pn) in [
            (&first_of_1, KEY_EPOCH_PACKETS),
            (&last_of_0, KEY_EPOCH_PACKETS - 1),
            (&first_of_3, 3 * KEY_EPOCH_PACKETS),
            (&first_of_1, KEY_EPOCH_PACKETS),
            (&last_of_0, KEY_EPOCH_PACKETS - 1),
        ] {
            let mut b2 = body.clone();
            let plain = server.open(header, &mut b2).unwrap();
            assert_eq!(plain, (pn as u32).to_be_bytes(), "pn {pn}");
        }
        assert_eq!(server.rx.epoch, 3);
        // Each epoch's key differs: a packet moved to another epoch's number fails.
        let mut moved = first_of_1.clone();
        moved[..PN_LEN].copy_from_slice(&(KEY_EPOCH_PACKETS - 1).to_be_bytes());
        assert_eq!(server.open(header, &mut moved), Err(OpenError));
    }

    #[test]
    fn every_packet_has_a_fresh_packet_number() {
        let (a, b) = pair();
        let (mut client, _) = handshake(&a, &b).unwrap();
        let mut one = vec![0u8; 3 + OVERHEAD];
        let mut two = one.clone();
        client.seal(b"h", &mut one, 3);
        client.seal(b"h", &mut two, 3);
        assert_ne!(one[..PN_LEN], two[..PN_LEN]);
        assert_ne!(one, two, "the same plaintext sealed twice must differ");
    }

    #[test]
    fn any_changed_bit_of_header_packet_number_or_body_is_refused() {
        let (a, b) = pair();
        let (mut client, mut server) = handshake(&a, &b).unwrap();
        let header = [7u8; 48];
        let mut body = vec![0u8; 40 + OVERHEAD];
        client.seal(&header, &mut body, 40);
        for i in 0..header.len() {
            let mut h = header;
            h[i] ^= 1;
            assert_eq!(
                server.open(&h, &mut body.clone()),
                Err(OpenError),
                "header byte {i}"
            );
        }
        for i in 0..body.len() {
            let mut b2 = body.clone();
            b2[i] ^= 0x80;
            assert_eq!(
                server.open(&header, &mut b2),
                Err(OpenError),
                "body byte {i}"
            );
        }
        assert_eq!(
            server.open(&header, &mut body[..OVERHEAD - 1].to_vec()),
            Err(OpenError)
        );
        // The sender's own direction is not the receiver's: a reflected packet is refused.
        assert_eq!(client.open(&header, &mut body.clone()), Err(OpenError));
    }

    #[test]
    fn a_client_key_outside_the_allow_list_is_refused() {
        let (a, b) = pair();
        // Right server key, but the server does not list the client's key.
        let stranger = Encryption::new(StaticKey::generate(), a.peers().to_vec());
        assert_eq!(
            handshake(&stranger, &b).err(),
            Some(HandshakeError::NotAllowed)
        );
        // Listed key, wrong address.
        let init = Initiator::start(&a, a.peer_key(B).unwrap(), binding(), &[1; 16]);
        let other = Ipv4Addr::new(10, 0, 0, 9);
        assert_eq!(
            respond(&b, other, binding(), init.msg1(), &[2; 16]).err(),
            Some(HandshakeError::NotAllowed)
        );
    }

    #[test]
    fn a_client_expecting_another_server_key_is_refused() {
        let (a, b) = pair();
        let wrong = Encryption::new(
            a.key.clone(),
            vec![PeerKey {
                ip: B,
                public: StaticKey::generate().public(),
            }],
        );
        assert_eq!(handshake(&wrong, &b).err(), Some(HandshakeError::Rejected));
    }

    #[test]
    fn a_handshake_message_cannot_move_to_another_flow() {
        let (a, b) = pair();
        let init = Initiator::start(&a, a.peer_key(B).unwrap(), binding(), &[1; 16]);
        let mut other = binding();
        other.client_token ^= 1;
        assert_eq!(
            respond(&b, A, other, init.msg1(), &[2; 16]).err(),
            Some(HandshakeError::Rejected)
        );
        // And the server's answer is bound to the client's first message.
        let msg2 = respond(&b, A, binding(), init.msg1(), &[2; 16])
            .unwrap()
            .msg2;
        let init2 = Initiator::start(&a, a.peer_key(B).unwrap(), binding(), &[1; 16]);
        assert_eq!(init2.finish(&msg2).err(), Some(HandshakeError::Rejected));
    }

    #[test]
    fn reset_tokens_need_the_static_key_and_bind_the_flow() {
        let (a, b) = pair();
        let t = a.reset_token(7000, B, 49152, 42);
        assert_eq!(t, a.reset_token(7000, B, 49152, 42), "deterministic");
        assert_ne!(t, b.reset_token(7000, B, 49152, 42), "another key");
        assert_ne!(t, a.reset_token(7000, B, 49152, 43), "another flow token");
        assert_ne!(t, a.reset_token(7001, B, 49152, 42), "another port");
        let mut body = [0u8; OVERHEAD];
        body[PN_LEN..].copy_from_slice(&t);
        assert!(is_stateless_reset(&t, &body));
        body[OVERHEAD - 1] ^= 1;
        assert!(!is_stateless_reset(&t, &body));
    }
}
