//! A transport session: one pair of keys from one handshake, with its
//! sending counter and replay window.

use std::{ops::Range, time::Instant};

use zeroize::Zeroize;

use super::{
    constants::{REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME},
    crypto::{self, TAG_LEN},
    handshake::SessionKeys,
    messages::{TRANSPORT, TRANSPORT_HEADER_LEN, write_type},
    replay::ReplayWindow,
};

/// Bytes a transport message adds to a packet, before padding.
pub const OVERHEAD: usize = TRANSPORT_HEADER_LEN + TAG_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SessionError {
    #[error("the session's keys are too old or used up")]
    Expired,
    #[error("the output buffer is too small")]
    BufferTooSmall,
    #[error("the packet did not authenticate")]
    Decrypt,
    #[error("the counter was seen before or is older than the window")]
    Replay,
}

pub struct Session {
    pub local_index: u32,
    pub remote_index: u32,
    /// Only the initiator of a session starts the next handshake because of it.
    pub we_initiated: bool,
    pub created: Instant,
    send_key: [u8; 32],
    receive_key: [u8; 32],
    next_counter: u64,
    replay: ReplayWindow,
}

impl Session {
    pub fn new(keys: &SessionKeys, created: Instant) -> Session {
        Session {
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            we_initiated: keys.we_initiated,
            created,
            send_key: keys.send,
            receive_key: keys.receive,
            next_counter: 0,
            replay: ReplayWindow::default(),
        }
    }

    /// Whether the keys may still be used at `now` (REJECT_AFTER_TIME).
    pub fn usable(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) < REJECT_AFTER_TIME
    }

    pub fn age(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.created)
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.next_counter
    }

    /// The datagram size for a packet of `len` bytes: padded to 16.
    pub fn sealed_len(len: usize) -> usize {
        TRANSPORT_HEADER_LEN + len.next_multiple_of(16) + TAG_LEN
    }

    /// The padded size of a `len`-byte packet for a tunnel of `mtu` bytes: a
    /// multiple of 16, but not beyond the MTU (as the kernel's
    /// `calculate_skb_padding`), so full-size packets do not grow past it.
    pub fn padded_len(len: usize, mtu: usize) -> usize {
        if mtu == 0 || len > mtu {
            return len.next_multiple_of(16);
        }
        len.next_multiple_of(16).min(mtu)
    }

    /// Encrypts `packet` into `out` as a transport message for a tunnel of
    /// `mtu` bytes and returns its length. An empty packet is a keepalive.
    pub fn seal(
        &mut self,
        now: Instant,
        packet: &[u8],
        mtu: usize,
        out: &mut [u8],
    ) -> Result<usize, SessionError> {
        let job = self.prepare_seal(now, packet, mtu, out)?;
        job.seal(out);
        Ok(job.len)
    }

    /// The part of [`Session::seal`] that needs the session: takes the next
    /// counter and writes the header and the padded packet into `out`. The
    /// encryption is left to the returned job, which holds a copy of the key
    /// so that it can run elsewhere (on another core, after the device's lock
    /// is released).
    pub fn prepare_seal(
        &mut self,
        now: Instant,
        packet: &[u8],
        mtu: usize,
        out: &mut [u8],
    ) -> Result<SealJob, SessionError> {
        if !self.usable(now) || self.next_counter >= REJECT_AFTER_MESSAGES {
            return Err(SessionError::Expired);
        }
        let padded = Self::padded_len(packet.len(), mtu);
        let total = TRANSPORT_HEADER_LEN + padded + TAG_LEN;
        if out.len() < total {
            return Err(SessionError::BufferTooSmall);
        }
        let counter = self.next_counter;
        self.next_counter += 1;
        write_type(out, TRANSPORT);
        out[4..8].copy_from_slice(&self.remote_index.to_le_bytes());
        out[8..16].copy_from_slice(&counter.to_le_bytes());
        let body = &mut out[TRANSPORT_HEADER_LEN..total];
        body[..packet.len()].copy_from_slice(packet);
        body[packet.len()..padded].fill(0);
        Ok(SealJob { key: PacketKey(self.send_key), counter, len: total })
    }

    /// Authenticates and decrypts a transport message in place; returns where
    /// the (still padded) packet lies in `datagram`. The replay window only
    /// moves for authentic packets.
    pub fn open(&mut self, now: Instant, datagram: &mut [u8]) -> Result<Range<usize>, SessionError> {
        let job = self.check_open(now, datagram)?;
        let range = job.open(datagram)?;
        self.accept(job.counter)?;
        Ok(range)
    }

    /// The cheap first half of [`Session::open`]: the keys' age and the
    /// counter's limit. Moves nothing; the job decrypts with a copy of the
    /// key, and [`Session::accept`] then checks and records the counter (as
    /// wireguard-go and the kernel, after the AEAD, so that only authentic
    /// packets move the window).
    pub fn check_open(&self, now: Instant, datagram: &[u8]) -> Result<OpenJob, SessionError> {
        if !self.usable(now) {
            return Err(SessionError::Expired);
        }
        // A datagram too short for a header and a tag cannot authenticate.
        let Some(counter) = datagram.get(8..TRANSPORT_HEADER_LEN).and_then(|b| <[u8; 8]>::try_from(b).ok())
        else {
            return Err(SessionError::Decrypt);
        };
        let counter = u64::from_le_bytes(counter);
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(SessionError::Expired);
        }
        if datagram.len() < TRANSPORT_HEADER_LEN + TAG_LEN {
            return Err(SessionError::Decrypt);
        }
        Ok(OpenJob { key: PacketKey(self.receive_key), counter })
    }

    /// Records an authenticated counter in the replay window: the second
    /// half of [`Session::open`]. Refuses a counter already recorded, such as
    /// another copy of the packet decrypted at the same time.
    pub fn accept(&mut self, counter: u64) -> Result<(), SessionError> {
        if !self.replay.accept(counter, REJECT_AFTER_MESSAGES) {
            return Err(SessionError::Replay);
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn set_next_counter(&mut self, counter: u64) {
        self.next_counter = counter;
    }
}

/// One direction's ChaCha20-Poly1305 key, copied out of a session for AEAD
/// work done without the session (see [`SealJob`], [`OpenJob`]). Zeroized on
/// drop like the session's own copy.
#[derive(Clone)]
pub struct PacketKey([u8; 32]);

impl Drop for PacketKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The encryption of one transport message whose header and padded packet
/// [`Session::prepare_seal`] wrote.
#[derive(Clone)]
pub struct SealJob {
    key: PacketKey,
    counter: u64,
    /// The whole message's length, from its first byte.
    pub len: usize,
}

impl SealJob {
    /// Encrypts the message at the start of `out` (the buffer given to
    /// [`Session::prepare_seal`], or the same bytes moved) and writes its tag.
    /// `out` must hold the whole message, as that buffer did.
    pub fn seal(&self, out: &mut [u8]) {
        crypto::seal_in_place(&self.key.0, self.counter, &[], &mut out[TRANSPORT_HEADER_LEN..self.len]);
    }
}

/// The decryption of one transport message that passed
/// [`Session::check_open`].
#[derive(Clone)]
pub struct OpenJob {
    key: PacketKey,
    /// The message's counter, for [`Session::accept`] once it authenticated.
    pub counter: u64,
}

impl OpenJob {
    /// Authenticates and decrypts `datagram` in place; returns where the
    /// (still padded) packet lies in it.
    pub fn open(&self, datagram: &mut [u8]) -> Result<Range<usize>, SessionError> {
        let body = datagram.get_mut(TRANSPORT_HEADER_LEN..).ok_or(SessionError::Decrypt)?;
        let len =
            crypto::open_in_place(&self.key.0, self.counter, &[], body).map_err(|_| SessionError::Decrypt)?;
        Ok(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.send_key.zeroize();
        self.receive_key.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pair(now: Instant) -> (Session, Session) {
        let a = SessionKeys {
            local_index: 1,
            remote_index: 2,
            we_initiated: true,
            send: [1; 32],
            receive: [2; 32],
        };
        let b = SessionKeys {
            local_index: 2,
            remote_index: 1,
            we_initiated: false,
            send: [2; 32],
            receive: [1; 32],
        };
        (Session::new(&a, now), Session::new(&b, now))
    }

    #[test]
    fn seal_and_open_with_padding() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        for len in [0, 1, 15, 16, 17, 1420] {
            let packet: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = vec![0u8; Session::sealed_len(len)];
            let n = a.seal(now, &packet, 0, &mut out).unwrap();
            assert_eq!(n, out.len());
            assert_eq!((n - OVERHEAD) % 16, 0);
            assert_eq!(u32::from_le_bytes(out[4..8].try_into().unwrap()), 2, "the receiver's index");
            let range = b.open(now, &mut out).unwrap();
            assert_eq!(&out[range.clone()][..len], &packet[..]);
            assert!(out[range][len..].iter().all(|&b| b == 0), "padding is zeros");
        }
    }

    #[test]
    fn padding_stops_at_the_mtu() {
        assert_eq!(Session::padded_len(1420, 1420), 1420);
        assert_eq!(Session::padded_len(1419, 1420), 1420);
        assert_eq!(Session::padded_len(1400, 1420), 1408);
        assert_eq!(Session::padded_len(0, 1420), 0);
        assert_eq!(Session::padded_len(1, 1420), 16);
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let packet = vec![0x45u8; 1420];
        let mut out = vec![0u8; 1500];
        let n = a.seal(now, &packet, 1420, &mut out).unwrap();
        assert_eq!(n, 1452, "a full 1420-byte packet stays within a 1500-byte path");
        let range = b.open(now, &mut out[..n]).unwrap();
        assert_eq!(&out[range], &packet[..]);
    }

    #[test]
    fn replayed_and_tampered_packets_are_refused() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut out = vec![0u8; 64];
        let n = a.seal(now, b"ping", 0, &mut out).unwrap();
        let original = out[..n].to_vec();
        let mut copy = original.clone();
        b.open(now, &mut copy).unwrap();
        let mut again = original.clone();
        assert_eq!(b.open(now, &mut again), Err(SessionError::Replay));
        let mut tampered = original.clone();
        tampered[20] ^= 1;
        assert_eq!(b.open(now, &mut tampered), Err(SessionError::Decrypt));
        // A forged counter far ahead does not move the window.
        let mut forged = original;
        forged[8..16].copy_from_slice(&1_000_000u64.to_le_bytes());
        assert_eq!(b.open(now, &mut forged), Err(SessionError::Decrypt));
        let mut next = vec![0u8; 64];
        let n = a.seal(now, b"pong", 0, &mut next).unwrap();
        assert!(b.open(now, &mut next[..n]).is_ok());
    }

    #[test]
    fn keys_expire_by_age_and_by_counter() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut out = vec![0u8; 64];
        let late = now + REJECT_AFTER_TIME;
        assert_eq!(a.seal(late, b"x", 0, &mut out), Err(SessionError::Expired));
        let n = a.seal(late - Duration::from_millis(1), b"x", 0, &mut out).unwrap();
        assert_eq!(b.open(late, &mut out[..n]), Err(SessionError::Expired));

        let (mut a, _) = pair(now);
        a.set_next_counter(REJECT_AFTER_MESSAGES - 1);
        assert!(a.seal(now, b"last", 0, &mut out).is_ok());
        assert_eq!(a.seal(now, b"one too many", 0, &mut out), Err(SessionError::Expired));
    }

    #[test]
    fn a_counter_at_the_limit_is_refused_by_the_receiver() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        a.set_next_counter(REJECT_AFTER_MESSAGES - 1);
        let mut out = vec![0u8; 64];
        let n = a.seal(now, b"ok", 0, &mut out).unwrap();
        assert!(b.open(now, &mut out[..n]).is_ok());
        // Craft the next counter by hand: the sender refuses to make it.
        let mut forged = out[..n].to_vec();
        forged[8..16].copy_from_slice(&REJECT_AFTER_MESSAGES.to_le_bytes());
        assert_eq!(b.open(now, &mut forged), Err(SessionError::Expired));
    }
}
