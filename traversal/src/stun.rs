//! Server-reflexive candidates: STUN Binding requests sent from the WireGuard
//! socket (so the mapping they reveal is WireGuard's), their answers matched
//! by transaction id and source, sans IO.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ferry_connect::stun::{INITIAL_RTO, TRANSACTION_LEN, binding_request, parse_binding_response};
use rand_core::RngCore;

/// How often each STUN server is asked again: the answer keeps the
/// candidate current, and the request keeps the NAT mapping open.
pub const STUN_INTERVAL: Duration = Duration::from_secs(25);
/// Transmissions of one request (the first and the retries, each after
/// twice the previous wait, starting at [`INITIAL_RTO`]) before waiting for
/// the next [`STUN_INTERVAL`].
pub const STUN_ATTEMPTS: u32 = 5;
/// A server-reflexive address not confirmed for this long is withdrawn.
pub const STUN_STALE_AFTER: Duration = Duration::from_secs(3 * 25);

/// Why a STUN-framed datagram on the socket was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StunDrop {
    /// No request of ours to that source has that transaction id.
    Unmatched,
    /// Our transaction, but an error response or no mapped address.
    Failed,
}

/// What an answer says of the server-reflexive address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mapped {
    /// As the server said before.
    Same,
    /// An address from this server after none (its first, or after a
    /// network change or a stale answer, the same as it said last).
    Learned,
    /// Another address than the server said last, even after a gap:
    /// this end's NAT mapped the socket anew (its mappings forgotten, a new
    /// port or a new public address).
    Moved,
}

#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    mapped: Option<(SocketAddr, Instant)>,
    /// The last address it said, kept when `mapped` is withdrawn (stale, or
    /// after a network change), so that an answer after a gap still shows
    /// whether the address moved.
    last_said: Option<SocketAddr>,
    /// The request in flight: its id, when it was first sent, how many
    /// transmissions so far and when the next is due.
    pending: Option<Pending>,
    /// When the next request starts.
    next_query: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    txid: [u8; TRANSACTION_LEN],
    first_sent: Instant,
    sent: u32,
    resend_at: Instant,
}

/// The STUN side of one endpoint.
#[derive(Debug, Default)]
pub(crate) struct Stun {
    servers: Vec<Server>,
    /// Requests to send, (server, bytes).
    queue: Vec<(SocketAddr, Vec<u8>)>,
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Stun {
    /// Asks exactly these servers from now on; new ones at once. Returns
    /// whether the server-reflexive candidates changed (a server left).
    pub(crate) fn set_servers(&mut self, servers: Vec<SocketAddr>, now: Instant) -> bool {
        let before = self.reflexive();
        let mut old = std::mem::take(&mut self.servers);
        for addr in servers.into_iter().map(canonical) {
            if self.servers.iter().any(|s| s.addr == addr) {
                continue;
            }
            let server = match old.iter().position(|s| s.addr == addr) {
                Some(at) => old.swap_remove(at),
                None => Server { addr, mapped: None, last_said: None, pending: None, next_query: now },
            };
            self.servers.push(server);
        }
        self.reflexive() != before
    }

    /// The network changed: what the servers said no longer holds; ask
    /// them all again at once. Returns whether candidates were withdrawn.
    pub(crate) fn restart(&mut self, now: Instant) -> bool {
        let had = self.servers.iter().any(|s| s.mapped.is_some());
        for server in &mut self.servers {
            server.mapped = None;
            server.pending = None;
            server.next_query = now;
        }
        had
    }

    /// Sends what is due: new requests and retransmissions. Returns whether
    /// candidates were withdrawn (stale).
    pub(crate) fn handle_timeout(&mut self, now: Instant, rng: &mut impl RngCore) -> bool {
        let mut withdrawn = false;
        for server in &mut self.servers {
            if server.mapped.is_some_and(|(_, at)| now.saturating_duration_since(at) >= STUN_STALE_AFTER) {
                server.mapped = None;
                withdrawn = true;
            }
            if let Some(pending) = &mut server.pending
                && pending.resend_at <= now
            {
                if pending.sent >= STUN_ATTEMPTS {
                    // Unanswered: try again at the next period.
                    server.next_query = pending.first_sent.checked_add(STUN_INTERVAL).unwrap_or(now).max(now);
                    server.pending = None;
                } else {
                    self.queue.push((server.addr, binding_request(&pending.txid)));
                    pending.sent += 1;
                    pending.resend_at = now + backoff(pending.sent);
                }
            }
            if server.pending.is_none() && server.next_query <= now {
                let mut txid = [0u8; TRANSACTION_LEN];
                rng.fill_bytes(&mut txid);
                self.queue.push((server.addr, binding_request(&txid)));
                server.pending =
                    Some(Pending { txid, first_sent: now, sent: 1, resend_at: now + backoff(1) });
            }
        }
        withdrawn
    }

    /// The earliest time [`Stun::handle_timeout`] has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.servers
            .iter()
            .flat_map(|s| {
                let next = s.pending.map_or(s.next_query, |p| p.resend_at);
                let stale = s.mapped.and_then(|(_, at)| at.checked_add(STUN_STALE_AFTER));
                [Some(next), stale]
            })
            .flatten()
            .min()
    }

    /// Requests to send now.
    pub(crate) fn drain_transmits(&mut self) -> std::vec::Drain<'_, (SocketAddr, Vec<u8>)> {
        self.queue.drain(..)
    }

    /// A STUN-framed datagram arrived from `from`: what it says of this
    /// end's server-reflexive address.
    pub(crate) fn handle_answer(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<Mapped, StunDrop> {
        let from = canonical(from);
        let Some(server) = self.servers.iter_mut().find(|s| s.addr == from) else {
            return Err(StunDrop::Unmatched);
        };
        let Some(pending) = server.pending else { return Err(StunDrop::Unmatched) };
        let mapped = match parse_binding_response(datagram, &pending.txid) {
            Ok(mapped) => mapped,
            Err(
                ferry_connect::stun::ResponseError::OtherTransaction
                | ferry_connect::stun::ResponseError::Malformed(_)
                | ferry_connect::stun::ResponseError::NotBindingResponse,
            ) => return Err(StunDrop::Unmatched),
            Err(_) => {
                server.pending = None;
                server.next_query = pending.first_sent.checked_add(STUN_INTERVAL).unwrap_or(now).max(now);
                return Err(StunDrop::Failed);
            }
        };
        let answer = match (server.mapped, server.last_said) {
            (Some((before, _)), _) if before == mapped => Mapped::Same,
            (_, Some(before)) if before != mapped => Mapped::Moved,
            _ => Mapped::Learned,
        };
        server.mapped = Some((mapped, now));
        server.last_said = Some(mapped);
        server.pending = None;
        server.next_query = now + STUN_INTERVAL;
        Ok(answer)
    }

    /// The server-reflexive addresses known now, each once, in server order.
    pub(crate) fn reflexive(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for (addr, _) in self.servers.iter().filter_map(|s| s.mapped) {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        out
    }

    pub(crate) fn servers(&self) -> usize {
        self.servers.len()
    }
}

/// The wait after the `sent`-th transmission: the initial RTO, doubling.
fn backoff(sent: u32) -> Duration {
    INITIAL_RTO.saturating_mul(1u32 << sent.saturating_sub(1).min(8))
}

#[cfg(test)]
mod tests {
    use ferry_connect::stun::HEADER_LEN;

    use super::*;

    /// A Binding success response for `txid` mapping to `mapped` (IPv4),
    /// built by hand as a server would.
    fn answer(txid: &[u8], mapped: SocketAddr) -> Vec<u8> {
        let SocketAddr::V4(v4) = mapped else { panic!("IPv4 only here") };
        let cookie = 0x2112_a442u32.to_be_bytes();
        let mut m = vec![0x01, 0x01, 0, 12];
        m.extend_from_slice(&cookie);
        m.extend_from_slice(txid);
        // XOR-MAPPED-ADDRESS
        m.extend_from_slice(&[0x00, 0x20, 0, 8, 0, 1]);
        let port = v4.port() ^ 0x2112;
        m.extend_from_slice(&port.to_be_bytes());
        for (b, c) in v4.ip().octets().iter().zip(cookie) {
            m.push(b ^ c);
        }
        m
    }

    fn txid_of(request: &[u8]) -> Vec<u8> {
        request[8..HEADER_LEN].to_vec()
    }

    struct Counter(u8);
    impl RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 += 1;
            u64::from(self.0)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            self.0 += 1;
            dest.fill(self.0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    #[test]
    fn answers_count_only_from_the_server_with_our_transaction() {
        let (t0, mut rng) = (Instant::now(), Counter(0));
        let server: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        let mut stun = Stun::default();
        assert!(!stun.set_servers(vec![server, "[::ffff:203.0.113.1]:3478".parse().unwrap()], t0));
        assert_eq!(stun.servers(), 1);
        stun.handle_timeout(t0, &mut rng);
        let sent: Vec<_> = stun.drain_transmits().collect();
        assert_eq!(sent.len(), 1);
        let txid = txid_of(&sent[0].1);
        let mapped: SocketAddr = "198.51.100.2:51820".parse().unwrap();
        // Another source, another transaction: dropped.
        let elsewhere: SocketAddr = "203.0.113.66:3478".parse().unwrap();
        assert_eq!(stun.handle_answer(elsewhere, &answer(&txid, mapped), t0), Err(StunDrop::Unmatched));
        assert_eq!(stun.handle_answer(server, &answer(&[9; 12], mapped), t0), Err(StunDrop::Unmatched));
        assert!(stun.reflexive().is_empty());
        // Ours, from the server (in its IPv4-mapped form too).
        let from: SocketAddr = "[::ffff:203.0.113.1]:3478".parse().unwrap();
        assert_eq!(stun.handle_answer(from, &answer(&txid, mapped), t0), Ok(Mapped::Learned));
        assert_eq!(stun.reflexive(), vec![mapped]);
        // A replay of the same answer matches nothing any more.
        assert_eq!(stun.handle_answer(server, &answer(&txid, mapped), t0), Err(StunDrop::Unmatched));
        // The next query comes a period later, with a new transaction.
        assert_eq!(stun.poll_timeout(), Some(t0 + STUN_INTERVAL));
        stun.handle_timeout(t0 + STUN_INTERVAL, &mut rng);
        let again: Vec<_> = stun.drain_transmits().collect();
        assert_eq!(again.len(), 1);
        assert_ne!(txid_of(&again[0].1), txid);
        // The same mapping again is no change.
        let t1 = t0 + STUN_INTERVAL;
        assert_eq!(stun.handle_answer(server, &answer(&txid_of(&again[0].1), mapped), t1), Ok(Mapped::Same));
        // Another one is a move: the NAT mapped the socket anew.
        let t2 = t1 + STUN_INTERVAL;
        stun.handle_timeout(t2, &mut rng);
        let third: Vec<_> = stun.drain_transmits().collect();
        let remapped: SocketAddr = "198.51.100.2:40007".parse().unwrap();
        assert_eq!(
            stun.handle_answer(server, &answer(&txid_of(&third[0].1), remapped), t2),
            Ok(Mapped::Moved)
        );
        assert_eq!(stun.reflexive(), vec![remapped]);
        // The server leaves: its candidate goes.
        assert!(stun.set_servers(vec![], t2));
        assert!(stun.reflexive().is_empty());
    }

    #[test]
    fn an_address_that_moved_while_withdrawn_is_a_move() {
        let (t0, mut rng) = (Instant::now(), Counter(0));
        let server: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        let mut stun = Stun::default();
        stun.set_servers(vec![server], t0);
        stun.handle_timeout(t0, &mut rng);
        let txid = txid_of(&stun.drain_transmits().next().unwrap().1);
        let mapped: SocketAddr = "198.51.100.2:51820".parse().unwrap();
        assert_eq!(stun.handle_answer(server, &answer(&txid, mapped), t0), Ok(Mapped::Learned));
        // A network change forgets it; the same address again is learned,
        // another is a move.
        for (answer_with, expected) in
            [(mapped, Mapped::Learned), ("192.0.2.77:40001".parse().unwrap(), Mapped::Moved)]
        {
            stun.restart(t0);
            assert!(stun.reflexive().is_empty());
            stun.handle_timeout(t0, &mut rng);
            let txid = txid_of(&stun.drain_transmits().next().unwrap().1);
            assert_eq!(stun.handle_answer(server, &answer(&txid, answer_with), t0), Ok(expected));
        }
    }

    #[test]
    fn unanswered_requests_are_retried_with_backoff_then_wait_a_period() {
        let (t0, mut rng) = (Instant::now(), Counter(0));
        let server: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        let mut stun = Stun::default();
        stun.set_servers(vec![server], t0);
        let mut at = t0;
        let mut sends = Vec::new();
        for _ in 0..20 {
            stun.handle_timeout(at, &mut rng);
            sends.extend(stun.drain_transmits().map(|(_, request)| (at, txid_of(&request))));
            at = stun.poll_timeout().unwrap();
            if at >= t0 + STUN_INTERVAL {
                break;
            }
        }
        assert_eq!(sends.len() as u32, STUN_ATTEMPTS);
        // One transaction, resent after 0.5, 1, 2 and 4 s.
        assert!(sends.iter().all(|(_, txid)| *txid == sends[0].1));
        let gaps: Vec<u64> = sends.windows(2).map(|w| (w[1].0 - w[0].0).as_millis() as u64).collect();
        assert_eq!(gaps, vec![500, 1000, 2000, 4000]);
        assert_eq!(at, t0 + STUN_INTERVAL);
    }

    #[test]
    fn candidates_go_stale_and_a_network_change_forgets_them() {
        let (t0, mut rng) = (Instant::now(), Counter(0));
        let server: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        let mapped: SocketAddr = "198.51.100.2:51820".parse().unwrap();
        let mut stun = Stun::default();
        stun.set_servers(vec![server], t0);
        stun.handle_timeout(t0, &mut rng);
        let txid = txid_of(&stun.drain_transmits().next().unwrap().1);
        assert_eq!(stun.handle_answer(server, &answer(&txid, mapped), t0), Ok(Mapped::Learned));
        // No answer to any refresh: withdrawn after STUN_STALE_AFTER.
        let mut at = t0;
        while at < t0 + STUN_STALE_AFTER {
            assert!(!stun.handle_timeout(at, &mut rng));
            stun.drain_transmits().for_each(drop);
            at = stun.poll_timeout().unwrap();
        }
        assert!(stun.handle_timeout(at, &mut rng));
        assert!(stun.reflexive().is_empty());
        stun.drain_transmits().for_each(drop);
        // A network change asks at once.
        let t2 = at + Duration::from_secs(1);
        assert!(!stun.restart(t2));
        assert_eq!(stun.poll_timeout(), Some(t2));
        stun.handle_timeout(t2, &mut rng);
        assert_eq!(stun.drain_transmits().count(), 1);
    }
}
