//! Loss and delay on a router's link where the kernel has no `sch_netem`
//! (nor `fq`, whose departure times a program could set): every packet the
//! router forwards in or out of one interface goes to an NFQUEUE, and a
//! thread of ours gives each its verdict once its delay has passed, or
//! drops it with the loss probability. The packets keep their order (one
//! delay for all, verdicts first in, first out).
//!
//! The rules use `--queue-bypass`: a packet that finds no listener passes
//! untouched, so a line that stopped (or never bound) never blackholes the
//! link. Queue numbers are per network namespace: one line per router.

use std::{
    collections::VecDeque,
    fs::File,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

use crate::{Error, Netns, Result, rng::Rng};

/// The queue the rules send packets to (any number; one line per namespace).
const QUEUE: u16 = 4242;
/// How many packets the kernel holds for the queue before it drops more.
const QUEUE_LENGTH: u32 = 8192;
/// The bytes of each packet copied to us: none are read or changed.
const COPY_BYTES: u16 = 64;
/// How often the thread looks for packets when there are none.
const IDLE: Duration = Duration::from_millis(1);

/// What a line does to each packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Impairment {
    /// The chance that a packet is dropped, in percent (0 to 100).
    pub loss_percent: u32,
    /// How long every other packet is held.
    pub delay: Duration,
}

/// What a line did, once stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineStats {
    pub passed: u64,
    pub dropped: u64,
}

/// A running line; [`DelayLine::stop`] takes its rules out and lets the
/// packets it still holds go.
pub struct DelayLine {
    ns: Netns,
    rules: Vec<Vec<String>>,
    stop: Arc<AtomicBool>,
    /// The packets held now.
    holding: Arc<AtomicU64>,
    thread: Option<JoinHandle<std::io::Result<LineStats>>>,
}

impl DelayLine {
    /// Impairs what the router in `ns` forwards through `interface`, both
    /// ways; `seed` drives which packets are lost.
    pub fn start(ns: &Netns, interface: &str, impairment: Impairment, seed: u64) -> Result<DelayLine> {
        if impairment.loss_percent > 100 {
            return Err(Error::Setup(format!("a loss of {}% is not a percentage", impairment.loss_percent)));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = mpsc::channel();
        let path = ns.path();
        let name = ns.name().to_string();
        let stopping = stop.clone();
        let holding = Arc::new(AtomicU64::new(0));
        let held_now = holding.clone();
        let thread = std::thread::Builder::new()
            .name(format!("delay-{interface}"))
            .spawn(move || -> std::io::Result<LineStats> {
                let queue = File::open(&path).and_then(|file| {
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                    bind()
                });
                match queue {
                    Ok(queue) => {
                        let _ = bound_tx.send(Ok(()));
                        serve(queue, impairment, seed, &stopping, &held_now)
                    }
                    Err(error) => {
                        let _ = bound_tx.send(Err(format!("binding NFQUEUE {QUEUE} in {name}: {error}")));
                        Err(error)
                    }
                }
            })
            .map_err(|e| Error::Setup(format!("starting the delay line's thread: {e}")))?;
        let mut line = DelayLine { ns: ns.clone(), rules: Vec::new(), stop, holding, thread: Some(thread) };
        match bound_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(Error::Setup(why)),
            Err(_) => return Err(Error::Setup("the delay line's thread ended before binding".into())),
        }
        // Bound first: the rules then never meet a queue without a listener.
        for direction in ["-i", "-o"] {
            let rule: Vec<String> = [
                "FORWARD",
                direction,
                interface,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &QUEUE.to_string(),
                "--queue-bypass",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut insert = vec!["-I".to_string()];
            insert.extend(rule.iter().cloned());
            line.ns.exec("iptables", &insert.iter().map(String::as_str).collect::<Vec<_>>())?;
            line.rules.push(rule);
        }
        Ok(line)
    }

    /// How many packets the line holds now.
    pub fn holding(&self) -> u64 {
        self.holding.load(Ordering::Relaxed)
    }

    /// Takes the rules out, lets every packet still held go at once (the
    /// impairment is over), and says what the line did.
    pub fn stop(mut self) -> Result<LineStats> {
        self.remove_rules()?;
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Ok(stats))) => Ok(stats),
            Some(Ok(Err(error))) => Err(Error::Setup(format!("the delay line failed: {error}"))),
            Some(Err(_)) => Err(Error::Setup("the delay line's thread panicked".into())),
            None => Ok(LineStats::default()),
        }
    }

    fn remove_rules(&mut self) -> Result<()> {
        while let Some(rule) = self.rules.pop() {
            let mut delete = vec!["-D".to_string()];
            delete.extend(rule);
            self.ns.exec("iptables", &delete.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(())
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        // Best effort: the namespace may be gone with its rules.
        let _ = self.remove_rules();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind() -> std::io::Result<nfq::Queue> {
    let mut queue = nfq::Queue::open()?;
    queue.bind(QUEUE)?;
    queue.set_copy_range(QUEUE, COPY_BYTES)?;
    queue.set_queue_max_len(QUEUE, QUEUE_LENGTH)?;
    // A burst that overran the socket's buffer is lost packets, as a link
    // would lose them, not a reason to stop.
    queue.set_recv_enobufs(false)?;
    queue.set_nonblocking(true);
    Ok(queue)
}

/// Gives every packet its verdict until told to stop and nothing is held.
fn serve(
    mut queue: nfq::Queue,
    impairment: Impairment,
    seed: u64,
    stop: &AtomicBool,
    holding: &AtomicU64,
) -> std::io::Result<LineStats> {
    let mut stats = LineStats::default();
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let mut random = Rng::new(seed);
    loop {
        let now = Instant::now();
        let stopping = stop.load(Ordering::Relaxed);
        while held.front().is_some_and(|(due, _)| stopping || *due <= now) {
            if let Some((_, mut message)) = held.pop_front() {
                message.set_verdict(nfq::Verdict::Accept);
                queue.verdict(message)?;
                stats.passed += 1;
            }
        }
        match queue.recv() {
            Ok(mut message) => {
                if random.below(100) < u64::from(impairment.loss_percent) {
                    message.set_verdict(nfq::Verdict::Drop);
                    queue.verdict(message)?;
                    stats.dropped += 1;
                } else {
                    held.push_back((Instant::now() + impairment.delay, message));
                }
                holding.store(held.len() as u64, Ordering::Relaxed);
                continue;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => continue,
            Err(error) => return Err(error),
        }
        holding.store(held.len() as u64, Ordering::Relaxed);
        if stopping && held.is_empty() {
            let _ = queue.unbind(QUEUE);
            return Ok(stats);
        }
        let next = held.front().map_or(IDLE, |(due, _)| due.saturating_duration_since(Instant::now()));
        std::thread::sleep(next.min(IDLE));
    }
}
