//! Key material for encryption in transit (docs/PROTOCOL.md §12): the private key file, the
//! allow-list of peer public keys, and writing a new key (`machnet keygen`).
//!
//! Keys are 32-byte X25519 keys written in standard base64 (44 characters, the format of
//! WireGuard's keys). The private key file holds one such key (surrounding whitespace is
//! ignored) and must be readable by its owner only, as ssh demands of its private keys. A
//! peer-keys file holds one `IP BASE64PUB` per line (`#` starts a comment) and must be writable
//! by its owner only: whoever can change it can let any host in.
//!
//! Nothing here prints or logs a private key.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use machnet_core::seal::{KeyError, PeerKey, StaticKey, KEY_LEN};

/// Largest key file read (a key is 44 characters; this leaves room for whitespace).
const MAX_KEY_FILE: u64 = 4096;
/// Largest peer-keys file read.
const MAX_PEER_KEYS_FILE: u64 = 16 << 20;

/// Why a key, a key file or a peer entry is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The private key file is not a regular file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// The private key file may be read or written by users other than its owner.
    #[error(
        "permissions {mode:04o} for {path} are too open: a private key must be accessible by its \
         owner only (chmod 600 {path})"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The peer-keys file may be changed by users other than its owner (who could then add
    /// themselves to the allow-list).
    #[error(
        "permissions {mode:04o} for {path} are too open: others must not be able to change the \
         allow-list (chmod go-w {path})"
    )]
    Writable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file is larger than any valid one.
    #[error("{path} is too large ({len} bytes) to be a key file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// Not base64.
    #[error("not a base64 key: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Base64, but not a usable key.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// A peer entry is not `IP=BASE64PUB` (flag) or `IP BASE64PUB` (file line).
    #[error("`{entry}` is not `{form}`")]
    PeerSyntax {
        /// The entry as given.
        entry: String,
        /// The expected form.
        form: &'static str,
    },
    /// A peer entry's address is not a unicast IPv4 address.
    #[error("`{0}` is not a unicast IPv4 address")]
    PeerAddress(String),
    /// A peer-keys file line is bad.
    #[error("{path} line {line}: {why}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: Box<KeyFileError>,
    },
    /// Two entries for one address (the allow-list binds each address to one key).
    #[error("{0} is listed twice")]
    DuplicatePeer(Ipv4Addr),
    /// `keygen` does not overwrite a file.
    #[error("{path} already exists; not overwriting it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The new key file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Decodes a base64 key of [`KEY_LEN`] bytes (surrounding whitespace ignored).
pub fn decode_key(text: impl AsRef<[u8]>) -> Result<[u8; KEY_LEN], KeyFileError> {
    let bytes = STANDARD.decode(text.as_ref().trim_ascii())?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| KeyFileError::Key(KeyError::Length(len)))
}

/// The base64 form of a key.
pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
    STANDARD.encode(key)
}

/// Opens `path`, which must be a regular file; the file and its metadata, taken from the open
/// file rather than the path again (which could be replaced in between).
fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), KeyFileError> {
    let read = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    Ok((file, meta))
}

/// Reads a private key file: a regular file, not accessible by group or others, holding one
/// base64 key.
pub fn read_private_key(path: &Path) -> Result<StaticKey, KeyFileError> {
    let read = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let (file, meta) = open_regular(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyFileError::TooLarge {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let mut text = Vec::new();
    let got = file.take(MAX_KEY_FILE).read_to_end(&mut text);
    let private = got.map_err(read).and_then(|_| decode_key(&text));
    // Best effort: do not leave the key's text in freed memory.
    text.fill(0);
    let mut private = private?;
    let key = StaticKey::from_private(&private);
    private.fill(0);
    Ok(key?)
}

/// Parses a `--peer-key` value, `IP=BASE64PUB`.
pub fn parse_peer_flag(entry: &str) -> Result<PeerKey, KeyFileError> {
    let (ip, key) = entry
        .split_once('=')
        .ok_or_else(|| KeyFileError::PeerSyntax {
            entry: entry.to_owned(),
            form: "IP=BASE64PUB",
        })?;
    peer(ip, key)
}

fn peer(ip: &str, key: &str) -> Result<PeerKey, KeyFileError> {
    let ip = ip.trim();
    let addr: Ipv4Addr = ip
        .parse()
        .map_err(|_| KeyFileError::PeerAddress(ip.to_owned()))?;
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
        return Err(KeyFileError::PeerAddress(ip.to_owned()));
    }
    Ok(PeerKey {
        ip: addr,
        public: decode_key(key)?,
    })
}

/// Parses the text of a peer-keys file (`path` names it in errors): one `IP BASE64PUB` per
/// line, blank lines and `#` comments ignored.
pub fn parse_peer_keys(path: &Path, text: &str) -> Result<Vec<PeerKey>, KeyFileError> {
    let mut peers = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split_once('#').map_or(line, |(l, _)| l).trim();
        if line.is_empty() {
            continue;
        }
        let at = |why| KeyFileError::Line {
            path: path.to_owned(),
            line: i + 1,
            why: Box::new(why),
        };
        let mut fields = line.split_whitespace();
        let (Some(ip), Some(key), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(at(KeyFileError::PeerSyntax {
                entry: line.to_owned(),
                form: "IP BASE64PUB",
            }));
        };
        peers.push(peer(ip, key).map_err(at)?);
    }
    Ok(peers)
}

/// Reads a peer-keys file: a regular file that only its owner may write (as ssh demands of
/// `authorized_keys`).
pub fn read_peer_keys(path: &Path) -> Result<Vec<PeerKey>, KeyFileError> {
    let read = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let (file, meta) = open_regular(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(KeyFileError::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    let len = meta.len();
    if len > MAX_PEER_KEYS_FILE {
        return Err(KeyFileError::TooLarge {
            path: path.to_owned(),
            len,
        });
    }
    let mut text = String::new();
    file.take(MAX_PEER_KEYS_FILE)
        .read_to_string(&mut text)
        .map_err(read)?;
    parse_peer_keys(path, &text)
}

/// Fails if two peers share an address.
pub fn check_unique(peers: &[PeerKey]) -> Result<(), KeyFileError> {
    let mut seen = std::collections::HashSet::new();
    match peers.iter().find(|p| !seen.insert(p.ip)) {
        Some(p) => Err(KeyFileError::DuplicatePeer(p.ip)),
        None => Ok(()),
    }
}

/// Writes a new random private key to `path` (mode 0600; an existing file is never
/// overwritten) and returns the key.
pub fn write_new_key(path: &Path) -> Result<StaticKey, KeyFileError> {
    let key = StaticKey::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists {
                path: path.to_owned(),
            },
            _ => KeyFileError::Write {
                path: path.to_owned(),
                source,
            },
        })?;
    let write = |source| KeyFileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut text = STANDARD.encode(key.private()).into_bytes();
    text.push(b'\n');
    let written = file.write_all(&text).and_then(|()| file.sync_all());
    text.fill(0);
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(write(e));
    }
    Ok(key)
}
