//! Batched datagram IO: one `recvmmsg` fills up to [`BATCH`] datagrams, one
//! `sendmmsg` sends a batch. This is the userspace forwarding path (`--xdp
//! off`, and whatever XDP passes up), and the benchmark's baseline.

use std::{
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
};

use socket2::SockAddr;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Bytes per datagram slot. WireGuard datagrams are the tunnel MTU plus 32
/// bytes of overhead: 1452 with the default MTU of 1420, and up to 9032 with
/// a jumbo MTU on the peers; larger ones arrive truncated and are dropped.
pub const SLOT: usize = 9216;

/// Received datagrams: `len(i)` bytes of `slot(i)` from `from(i)`.
pub struct RecvBatch {
    buf: Vec<u8>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    from: [Option<SocketAddr>; BATCH],
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            buf: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
            truncated: [false; BATCH],
            from: [None; BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i`: its sender and bytes, or None if it did not fit a slot
    /// or came from an address family we cannot name.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.count || self.truncated[i] {
            return None;
        }
        let from = self.from[i]?;
        Some((from, &self.buf[i * SLOT..i * SLOT + self.lens[i]]))
    }

    /// Receives what is queued on `fd` (non-blocking), up to [`BATCH`]
    /// datagrams. `WouldBlock` when nothing is.
    pub fn recv(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        self.count = 0;
        let mut names: [MaybeUninit<libc::sockaddr_storage>; BATCH] = [MaybeUninit::uninit(); BATCH];
        let mut iovecs: Vec<libc::iovec> = self
            .buf
            .chunks_exact_mut(SLOT)
            .map(|slot| libc::iovec { iov_base: slot.as_mut_ptr().cast(), iov_len: SLOT })
            .collect();
        // SAFETY: mmsghdr is plain old data; zero is a valid value.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((header, iovec), name) in headers.iter_mut().zip(iovecs.iter_mut()).zip(names.iter_mut()) {
            header.msg_hdr.msg_name = name.as_mut_ptr().cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live iovec over its own slot of
        // `buf` and at its own sockaddr_storage, all outliving the call.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let header = &headers[i];
            self.lens[i] = (header.msg_len as usize).min(SLOT);
            self.truncated[i] = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // SAFETY: the kernel wrote msg_namelen bytes of a sockaddr into
            // this storage; SockAddr only reads them.
            let addr = unsafe {
                SockAddr::try_init(|storage, len| {
                    std::ptr::copy_nonoverlapping(
                        names[i].as_ptr().cast::<u8>(),
                        storage.cast::<u8>(),
                        header.msg_hdr.msg_namelen as usize,
                    );
                    *len = header.msg_hdr.msg_namelen;
                    Ok(())
                })
            };
            self.from[i] = addr.ok().and_then(|((), a)| a.as_socket()).map(unmap);
        }
        self.count = n;
        Ok(n)
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// Datagrams to send, copied into one buffer.
#[derive(Default)]
pub struct SendBatch {
    buf: Vec<u8>,
    entries: Vec<(SockAddr, usize, usize)>,
}

impl SendBatch {
    pub fn push(&mut self, to: SocketAddr, datagram: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(datagram);
        self.entries.push((SockAddr::from(to), start, datagram.len()));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.entries.clear();
    }

    /// Sends the batch with as few `sendmmsg` calls as the kernel allows.
    /// Returns how many datagrams went out; the rest hit a full socket
    /// buffer (`WouldBlock`) or an error, and UDP lets them go.
    pub fn send(&self, fd: &impl AsRawFd) -> (usize, Option<io::Error>) {
        let mut sent = 0;
        while sent < self.entries.len() {
            match self.send_some(fd.as_raw_fd(), sent) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return (sent, Some(e)),
            }
        }
        (sent, None)
    }

    fn send_some(&self, fd: RawFd, first: usize) -> io::Result<usize> {
        let entries = &self.entries[first..(first + BATCH).min(self.entries.len())];
        let mut iovecs: Vec<libc::iovec> = entries
            .iter()
            .map(|&(_, start, len)| libc::iovec {
                // sendmmsg only reads through this pointer.
                iov_base: self.buf[start..].as_ptr() as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: plain old data; zero is valid.
        let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; entries.len()];
        for ((header, iovec), (to, _, _)) in headers.iter_mut().zip(iovecs.iter_mut()).zip(entries) {
            header.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
            header.msg_hdr.msg_namelen = to.len();
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live address and an iovec over
        // `buf`, all outliving the call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(fd, headers.as_mut_ptr(), headers.len() as libc::c_uint, libc::MSG_DONTWAIT)
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[test]
    fn a_batch_goes_out_and_comes_back_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut out = SendBatch::default();
        for i in 0..50u8 {
            out.push(to, &vec![i; 10 + usize::from(i)]);
        }
        assert_eq!(out.send(&tx).0, 50);
        let mut batch = RecvBatch::default();
        let mut seen = Vec::new();
        while seen.len() < 50 {
            match batch.recv(&rx) {
                Ok(n) => {
                    for i in 0..n {
                        let (from, bytes) = batch.get(i).unwrap();
                        assert_eq!(from, tx.local_addr().unwrap());
                        seen.push(bytes.to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        for (i, bytes) in seen.iter().enumerate() {
            assert_eq!(bytes, &vec![i as u8; 10 + i]);
        }
    }

    #[test]
    fn oversized_datagrams_are_marked_not_returned() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&vec![1u8; SLOT + 1], rx.local_addr().unwrap()).unwrap();
        tx.send_to(&[2u8; 8], rx.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::default();
        let mut got = 0;
        while got < 2 {
            if let Ok(n) = batch.recv(&rx) {
                for i in 0..n {
                    if got == 0 {
                        assert!(batch.get(i).is_none());
                    } else {
                        assert_eq!(batch.get(i).unwrap().1, &[2u8; 8]);
                    }
                    got += 1;
                }
            }
        }
    }

    #[test]
    fn mapped_addresses_are_unmapped() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5".parse().unwrap();
        assert_eq!(unmap(mapped), "192.0.2.1:5".parse().unwrap());
    }
}
