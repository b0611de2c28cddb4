//! What the kernel knows about the bytes a control channel sent: whether the
//! peer's kernel has acknowledged them. A peer that is merely slow to read
//! still has its kernel acknowledge our segments within a round trip; a
//! connection stuck behind segments lost in an outage does not.

use std::os::fd::AsRawFd;

use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;

/// How long new data may wait for its acknowledgement before it counts as
/// stuck rather than in flight: far above any round trip to the cloud, far
/// below the seconds TCP's retransmission backoff holds it after an outage.
const IN_FLIGHT_AT_MOST_MS: u32 = 1_000;

/// A transport that can tell whether what it sent is stuck.
pub trait SendState {
    /// `Some(true)` when the kernel holds bytes the peer has not
    /// acknowledged and is retransmitting them with a backoff, or sent
    /// nothing for a while (`tcpi_last_data_sent`, which counts
    /// retransmissions too); `Some(false)` when everything sent was
    /// acknowledged (or is just in flight); `None` when the transport cannot
    /// tell.
    fn unacknowledged(&self) -> Option<bool>;
}

impl SendState for TcpStream {
    fn unacknowledged(&self) -> Option<bool> {
        let info = tcp_info(self)?;
        // Unacknowledged bytes in every case: a backoff alone is also what
        // zero-window probes to a live peer with a full buffer raise, and
        // what can linger after a retransmission was acknowledged.
        Some(
            info.tcpi_unacked > 0
                && (info.tcpi_backoff > 0
                    || info.tcpi_retransmits > 0
                    || info.tcpi_last_data_sent >= IN_FLIGHT_AT_MOST_MS),
        )
    }
}

/// TLS or not, the bytes travel over the same TCP connection.
impl<S: SendState> SendState for MaybeTlsStream<S> {
    fn unacknowledged(&self) -> Option<bool> {
        self.get_ref().unacknowledged()
    }
}

/// In-memory pipes (tests) have no kernel to ask.
impl SendState for tokio::io::DuplexStream {
    fn unacknowledged(&self) -> Option<bool> {
        None
    }
}

/// The kernel's `TCP_INFO` for `stream`, if it gives it.
pub fn tcp_info(stream: &TcpStream) -> Option<libc::tcp_info> {
    // SAFETY: all-zero bytes are a valid `tcp_info` (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is open for as long as `stream` is borrowed, and
    // `info` and `len` describe a writable buffer of `len` bytes; the kernel
    // writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // The fields read here are in the structure's first part, which every
    // Linux fills; a shorter answer is not the kernel's TCP.
    let enough = std::mem::offset_of!(libc::tcp_info, tcpi_last_data_recv) as libc::socklen_t;
    (rc == 0 && len >= enough).then_some(info)
}
