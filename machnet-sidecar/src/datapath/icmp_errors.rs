//! A UDP socket's error queue (`IP_RECVERR`, ip(7)): ICMP errors about datagrams it sent. The
//! kernel datapath reads it to learn that a peer's sidecar is gone — its host answers our
//! datagrams with ICMP "port unreachable" (PROTOCOL.md §8.4).

use std::io::{self, IoSliceMut};
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};

/// `sock_extended_err.ee_origin` of an error an ICMP message reported.
const SO_EE_ORIGIN_ICMP: u8 = 2;
/// ICMP type "destination unreachable" and its code "port unreachable".
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// What an ICMP error quotes at most of the datagram (576-byte ICMP message, RFC 1812 §4.3.2.3):
/// a buffer this large never truncates the quote.
pub(crate) const QUOTE_MAX: usize = 576;

/// One entry of the error queue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum QueuedError {
    /// ICMP port unreachable for the datagram sent to `dest`; its UDP payload's first `len`
    /// bytes are at the start of the caller's buffer.
    PortUnreachable { dest: SocketAddrV4, len: usize },
    /// Any other error (another ICMP type, a local error): nothing to act on.
    Other,
}

/// Whether a socket call failed because of an ICMP error the kernel recorded on the socket (with
/// `IP_RECVERR`, the next `recvmsg` or `sendmsg` reports it once): the error queue holds the
/// details, and the call itself may simply be retried.
pub(crate) fn is_icmp_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
    )
}

/// Reads one entry of `socket`'s error queue into `quote` (at least [`QUOTE_MAX`] bytes);
/// `None` when the queue is empty. Never blocks.
pub(crate) fn read_one(socket: &impl AsRawFd, quote: &mut [u8]) -> io::Result<Option<QueuedError>> {
    let mut iov = [IoSliceMut::new(quote)];
    // Room for the error and its offender's address, and for what else the socket asks for on
    // every read (receive timestamps): a truncated control message would lose the error.
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in, [u8; 128]);
    let msg = match recvmsg::<SockaddrIn>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(msg) => msg,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "error queue: control message truncated",
        ));
    }
    let len = msg.bytes;
    let dest = msg.address.map(|a| SocketAddrV4::new(a.ip(), a.port()));
    let port_unreachable = msg.cmsgs().map_err(io::Error::from)?.any(|c| {
        matches!(c, ControlMessageOwned::Ipv4RecvErr(ee, _)
            if ee.ee_origin == SO_EE_ORIGIN_ICMP
                && ee.ee_type == ICMP_DEST_UNREACH
                && ee.ee_code == ICMP_PORT_UNREACH)
    });
    Ok(Some(match (port_unreachable, dest) {
        (true, Some(dest)) => QueuedError::PortUnreachable { dest, len },
        _ => QueuedError::Other,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{setsockopt, sockopt};
    use std::net::UdpSocket;

    #[test]
    fn a_datagram_to_a_closed_port_comes_back_as_port_unreachable_with_its_payload() {
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dest = match closed.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        drop(closed); // nobody binds it now
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        setsockopt(&s, sockopt::Ipv4RecvErr, &true).unwrap();
        // Sidecar sockets also get a timestamp with every read: the error must still fit.
        setsockopt(&s, sockopt::ReceiveTimestampns, &true).unwrap();
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        s.send_to(&payload, dest).unwrap();
        let mut quote = [0u8; QUOTE_MAX];
        // Loopback answers at once, but the ICMP message is processed asynchronously.
        let mut got = None;
        for _ in 0..1000 {
            match read_one(&s, &mut quote).unwrap() {
                Some(e) => {
                    got = Some(e);
                    break;
                }
                None => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        let Some(QueuedError::PortUnreachable { dest: d, len }) = got else {
            panic!("no port unreachable: {got:?}");
        };
        assert_eq!(d, dest);
        assert!(len >= 48 && len <= payload.len(), "{len}");
        assert_eq!(&quote[..len], &payload[..len]);
        assert_eq!(
            read_one(&s, &mut quote).unwrap(),
            None,
            "one entry per error"
        );
    }
}
