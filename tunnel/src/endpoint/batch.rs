//! Grouping encrypted datagrams for UDP GSO: one `sendmsg` carries a run of
//! datagrams to one destination, all of one size except a shorter last one.

use std::net::SocketAddr;

/// One encrypted datagram in the contiguous send buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub to: SocketAddr,
    pub start: usize,
    pub len: usize,
}

/// A run of segments sendable as one GSO batch: `segments[first..first +
/// count]`, `segment_size` bytes each (the last may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub first: usize,
    pub count: usize,
    pub segment_size: usize,
}

/// Splits `segments` (contiguous, in send order) into GSO batches of at most
/// `max_segments` and at most 64 KiB.
pub fn gso_batches(segments: &[Segment], max_segments: usize) -> Vec<Batch> {
    const MAX_BYTES: usize = 65_000;
    let mut batches = Vec::new();
    let mut i = 0;
    while i < segments.len() {
        let head = segments[i];
        let mut count = 1;
        let mut bytes = head.len;
        while i + count < segments.len() && count < max_segments.max(1) {
            let next = segments[i + count];
            let previous = segments[i + count - 1];
            let joins = next.to == head.to
                && previous.len == head.len
                && next.len <= head.len
                && next.start == previous.start + previous.len
                && bytes + next.len <= MAX_BYTES;
            if !joins {
                break;
            }
            bytes += next.len;
            count += 1;
            if next.len < head.len {
                break; // a shorter segment must be the last one
            }
        }
        batches.push(Batch { first: i, count, segment_size: head.len });
        i += count;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(spec: &[(u16, usize)]) -> Vec<Segment> {
        let mut start = 0;
        spec.iter()
            .map(|&(port, len)| {
                let s = Segment { to: SocketAddr::from(([192, 0, 2, 1], port)), start, len };
                start += len;
                s
            })
            .collect()
    }

    #[test]
    fn equal_runs_batch_and_a_short_tail_closes_them() {
        let s = segs(&[(1, 1452), (1, 1452), (1, 1452), (1, 100), (1, 1452)]);
        assert_eq!(
            gso_batches(&s, 64),
            vec![
                Batch { first: 0, count: 4, segment_size: 1452 },
                Batch { first: 4, count: 1, segment_size: 1452 }
            ]
        );
    }

    #[test]
    fn destinations_sizes_and_limits_split_batches() {
        let s = segs(&[(1, 100), (2, 100), (2, 200), (2, 200), (2, 200)]);
        assert_eq!(
            gso_batches(&s, 2),
            vec![
                Batch { first: 0, count: 1, segment_size: 100 },
                Batch { first: 1, count: 1, segment_size: 100 },
                Batch { first: 2, count: 2, segment_size: 200 },
                Batch { first: 4, count: 1, segment_size: 200 },
            ]
        );
        let big = segs(&vec![(1, 1452); 60]);
        let batches = gso_batches(&big, 64);
        assert!(batches.iter().all(|b| b.count * b.segment_size <= 65_000), "{batches:?}");
        assert_eq!(batches.iter().map(|b| b.count).sum::<usize>(), 60);
    }

    #[test]
    fn every_segment_is_sent_exactly_once_in_order() {
        let s = segs(&[(1, 32), (1, 64), (1, 64), (3, 64), (3, 32), (3, 32), (1, 1452)]);
        let batches = gso_batches(&s, 64);
        let mut next = 0;
        for b in batches {
            assert_eq!(b.first, next);
            for seg in &s[b.first..b.first + b.count - 1] {
                assert_eq!(seg.len, b.segment_size);
            }
            assert!(s[b.first + b.count - 1].len <= b.segment_size);
            next += b.count;
        }
        assert_eq!(next, s.len());
    }
}
