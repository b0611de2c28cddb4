//! The relay-restart invariant: a session that carried traffic through a
//! relay before it was killed carries it again within [`RELAY_RECOVERY`]
//! of that relay running again (the bound the README promises for a relay
//! with a state file; the soak found sessions that never recovered). The
//! sessions with wireguard-go go through the relay; those with the `ferry`
//! client take the direct path where they can (else the relay), so for
//! those on it the check says only that the relay's restart did not
//! disturb them.
//!
//! The site invariant: a session that carried traffic before its site's
//! NAT forgot its mappings (a conntrack flush, or the site's link down,
//! which makes a masquerading router forget those of the link) or before
//! its gateway was killed carries it again within [`SITE_RECOVERY`] of the
//! flush, the link up or the gateway running again (the soak found relayed
//! sessions that stayed cut until their keys expired).
//!
//! And the live-path invariant for a fault that touches no session's path
//! (the cloud killed), or only slows it (loss and delay): a session
//! carrying traffic keeps carrying it, at once ([`UNTOUCHED_BOUND`]),
//! while the fault lasts and after it.

use std::time::{Duration, Instant};

use ferry_world::{ECHO_PORT, echo_round_trip, eventually};

use crate::{
    soak::{Outcome, Soak},
    workload::{Kind, SHORT_SESSION_S},
};

/// From the relay running again (online at the cloud) to an answered echo.
pub const RELAY_RECOVERY: Duration = Duration::from_secs(20);
/// From a site's conntrack flush, its link up again or its gateway running
/// again to an answered echo: the gateway asks its STUN servers every 25 s,
/// sees its address moved and starts a handshake through the relay; a
/// restarted gateway's first keepalive starts one; a direct path comes
/// back with its next probes.
pub const SITE_RECOVERY: Duration = Duration::from_secs(60);
/// How long an echo through a session whose path a fault does not touch
/// may take (a datagram lost is retried within it; no handshake is needed).
pub const UNTOUCHED_BOUND: Duration = Duration::from_secs(10);

/// A session whose traffic must come back: (technician, session, echo
/// proxy address).
pub struct Carrying {
    pub tech: usize,
    pub session: u64,
    pub echo: String,
    pub kind: Kind,
    /// Its gateway (by index).
    pub gateway: usize,
    /// The relay of its tunnel's configuration (by index), if it has one.
    pub relay: Option<usize>,
}

impl Soak {
    /// The live sessions whose tunnels answer an echo now, leaving out short
    /// ones that could expire before the check ends.
    pub fn carrying(&mut self) -> Vec<Carrying> {
        self.carrying_for(RELAY_RECOVERY + Duration::from_secs(20))
    }

    /// The live sessions whose tunnels answer an echo now, leaving out
    /// short ones that could expire within `margin`.
    pub fn carrying_for(&mut self, margin: Duration) -> Vec<Carrying> {
        self.carrying_where(margin, |_| true)
    }

    /// The sessions of gateway `g` carrying traffic now, leaving out those
    /// that could expire before a recovery is checked (every short one: it
    /// lasts 60 s).
    pub fn carrying_at(&mut self, g: usize) -> Vec<Carrying> {
        self.carrying_where(SITE_RECOVERY + Duration::from_secs(20), |at| at == g)
    }

    /// [`carrying_for`](Self::carrying_for), of the sessions whose gateway
    /// (by index) `at` takes.
    pub fn carrying_where(&mut self, margin: Duration, at: impl Fn(usize) -> bool) -> Vec<Carrying> {
        let mut carrying = Vec::new();
        for (tech, t) in self.techs.iter().enumerate() {
            let Some(live) = &t.live else { continue };
            if !at(live.gateway) {
                continue;
            }
            let Some(tunnel) = &live.tunnel else { continue };
            if live.short && live.started.elapsed() + margin > Duration::from_secs(SHORT_SESSION_S) {
                continue;
            }
            let Some(echo) = tunnel.proxies.get("echo").cloned() else { continue };
            if eventually(Duration::from_secs(5), || {
                echo_round_trip(&t.ns, &echo, ECHO_PORT, Duration::from_secs(2))
            })
            .is_ok()
            {
                carrying.push(Carrying {
                    tech,
                    session: live.id,
                    echo,
                    kind: live.kind,
                    gateway: live.gateway,
                    relay: tunnel.relay,
                });
            }
        }
        carrying
    }

    /// Why the peer of `c`'s session may refuse the handshake its gateway
    /// starts to move its binding at the relay, if it may: the gateway ran
    /// again since the session started and its clock was stepped since
    /// then too. A WireGuard responder takes an initiation only if its
    /// timestamp is later than the latest it took from that peer; the
    /// gateway keeps its timestamps rising through steps of its clock, but
    /// a new process starts from its wall clock again, which may be behind
    /// what the technician's end saw (ferry_tunnel's `initiation_stamp`).
    /// The technician's own handshakes cannot help here: they go to the
    /// relay's old binding. (After a kill of the gateway alone they do: its
    /// address at the relay stays.)
    fn rebind_may_be_refused(&self, c: &Carrying) -> Option<&'static str> {
        let started = self.techs[c.tech].live.as_ref().map(|l| l.started)?;
        let gateway = &self.gateways[c.gateway];
        let restarted = gateway.restarted_at.is_some_and(|at| at > started);
        let stepped = gateway.clock_stepped_at.is_some_and(|at| at > started);
        (restarted && stepped).then_some(
            "its gateway ran again during the session, which also saw its clock stepped, so the technician's end \
             may refuse the gateway's handshakes as replays until the gateway's clock passes what it sent before",
        )
    }

    /// An echo through `c` within `bound` of `since` (a counted check).
    fn echo_within(&mut self, c: &Carrying, bound: Duration, since: Instant) -> Result<(), String> {
        let ns = self.techs[c.tech].ns.clone();
        let left = bound.saturating_sub(since.elapsed());
        self.stats.checks += 1;
        eventually(left, || echo_round_trip(&ns, &c.echo, ECHO_PORT, Duration::from_secs(2))).map(drop)
    }

    /// Every session of `carrying` answers an echo within the bound after
    /// `running_again`.
    pub fn check_relay_recovery(&mut self, carrying: &[Carrying], running_again: Instant) -> Outcome {
        for c in carrying {
            if let Err(e) = self.echo_within(c, RELAY_RECOVERY, running_again) {
                return Err(format!(
                    "session {}: no echo through {} {RELAY_RECOVERY:?} after it ran again ({e})",
                    c.session,
                    Self::relay_label(c.relay)
                ));
            }
            *self.stats.relay_recoveries.entry(c.kind.name()).or_default() += 1;
            let relay = Self::relay_label(c.relay);
            let path = match c.kind {
                Kind::Stock => format!("through {relay}"),
                Kind::Ferry => format!("on the ferry client's path (its configuration with {relay})"),
            };
            self.event(format!(
                "session {}: traffic {path} again {:.1}s after it ran again",
                c.session,
                running_again.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }

    /// Every session of `carrying` answers an echo within [`SITE_RECOVERY`]
    /// of `since` (`after`: the flush of its site's NAT, its site's link up
    /// again, its gateway running again).
    /// `rebind`: whether the fault moved the gateway's address at its
    /// relays (a flush, a link), so that only a handshake the gateway
    /// starts brings its relayed sessions back.
    pub fn check_site_recovery(
        &mut self,
        carrying: &[Carrying],
        since: Instant,
        after: &str,
        rebind: bool,
    ) -> Outcome {
        let started = Instant::now();
        let outcome = 'check: {
            for c in carrying {
                if let Some(why) = self.rebind_may_be_refused(c).filter(|_| rebind) {
                    self.stats.site_recoveries_not_checked += 1;
                    self.event(format!("session {}: not checked after {after}: {why}", c.session));
                    continue;
                }
                if let Err(e) = self.echo_within(c, SITE_RECOVERY, since) {
                    break 'check Err(format!(
                        "session {} ({}): no echo {SITE_RECOVERY:?} after {after} ({e})",
                        c.session,
                        c.kind.name()
                    ));
                }
                *self.stats.site_recoveries.entry(c.kind.name()).or_default() += 1;
                self.event(format!(
                    "session {} ({}): traffic again {:.1}s after {after}",
                    c.session,
                    c.kind.name(),
                    since.elapsed().as_secs_f64()
                ));
            }
            Ok(())
        };
        self.site_recovery_time += started.elapsed();
        outcome
    }

    /// Every session of `carrying` answers an echo within
    /// [`UNTOUCHED_BOUND`] now, `when` (what the fault has done so far,
    /// for the event log and a breach).
    pub fn check_untouched(&mut self, carrying: &[Carrying], when: &str) -> Outcome {
        for c in carrying {
            let ns = self.techs[c.tech].ns.clone();
            let started = Instant::now();
            let answered = eventually(UNTOUCHED_BOUND, || {
                echo_round_trip(&ns, &c.echo, ECHO_PORT, Duration::from_secs(2))
            });
            self.stats.checks += 1;
            if let Err(e) = answered {
                return Err(format!(
                    "session {} ({}): no echo {when}, within {UNTOUCHED_BOUND:?} ({e})",
                    c.session,
                    c.kind.name()
                ));
            }
            self.stats.untouched_echoes += 1;
            self.event(format!(
                "session {}: traffic carried {when} ({:.1}s)",
                c.session,
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }
}
