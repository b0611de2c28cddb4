//! One conformance suite for the storage interface, run against sled and
//! PostgreSQL alike: atomic commits, expectations and conflicts under
//! concurrency, durability across reopening, ordered and paged scans, and
//! ids that are never handed out twice. PostgreSQL also gets its server
//! crashed and restarted under a backend that stays open.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use std::{collections::HashSet, sync::Arc};

use common::pg;
use ferry_cloud::store::{
    Backend, BackendError, Batch, Collection, PgOptions, PostgresBackend, SledBackend, Store, StoreError,
};

/// A storage under test that can be opened again on the same data.
enum Subject {
    Sled(tempfile::TempDir),
    Postgres(String),
}

impl Subject {
    fn sled() -> Subject {
        Subject::Sled(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Subject {
        Subject::Postgres(pg::fresh_database())
    }

    fn open(&self) -> Arc<dyn Backend> {
        match self {
            Subject::Sled(dir) => Arc::new(SledBackend::open(&dir.path().join("db")).unwrap()),
            Subject::Postgres(url) => {
                Arc::new(PostgresBackend::connect(&PgOptions::parse(url, None).unwrap()).unwrap())
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Subject::Sled(_) => "sled",
            Subject::Postgres(_) => "postgres",
        }
    }
}

/// Runs `check` against a fresh sled and a fresh PostgreSQL database.
fn both(check: impl Fn(&Subject)) {
    for subject in [Subject::sled(), Subject::postgres()] {
        eprintln!("against {}", subject.name());
        check(&subject);
    }
}

fn value(backend: &dyn Backend, collection: Collection, key: &[u8]) -> Option<Vec<u8>> {
    backend.get(collection, key).unwrap()
}

#[test]
fn commits_apply_together_and_survive_reopening() {
    both(|subject| {
        {
            let backend = subject.open();
            backend
                .commit(Batch::default().put(Collection::Users, "u1", "alice").put(
                    Collection::UserNames,
                    "alice",
                    "u1",
                ))
                .unwrap();
            backend
                .commit(Batch::default().put(Collection::Users, "u2", "bob").delete(Collection::Users, "u1"))
                .unwrap();
            // Changes apply in order: a put and then a delete of one key leave nothing.
            backend
                .commit(Batch::default().put(Collection::Users, "u3", "x").delete(Collection::Users, "u3"))
                .unwrap();
            backend
                .commit(Batch::default().delete(Collection::Users, "u4").put(Collection::Users, "u4", "y"))
                .unwrap();
        }
        let backend = subject.open();
        assert_eq!(value(&*backend, Collection::Users, b"u1"), None);
        assert_eq!(value(&*backend, Collection::Users, b"u2").as_deref(), Some(&b"bob"[..]));
        assert_eq!(value(&*backend, Collection::Users, b"u3"), None);
        assert_eq!(value(&*backend, Collection::Users, b"u4").as_deref(), Some(&b"y"[..]));
        assert_eq!(value(&*backend, Collection::UserNames, b"alice").as_deref(), Some(&b"u1"[..]));
        // Collections are apart: the same key elsewhere is another entry.
        assert_eq!(value(&*backend, Collection::Gateways, b"u2"), None);
    });
}

#[test]
fn a_failed_expectation_changes_nothing() {
    both(|subject| {
        let backend = subject.open();
        backend.commit(Batch::default().put(Collection::UserNames, "alice", "u1")).unwrap();
        let err = backend
            .commit(
                Batch::default()
                    .expect(Collection::UserNames, "alice", None)
                    .put(Collection::Users, "u9", "impostor")
                    .put(Collection::UserNames, "alice", "u9"),
            )
            .unwrap_err();
        assert!(matches!(err, BackendError::Conflict { collection: Collection::UserNames }), "{err}");
        assert_eq!(value(&*backend, Collection::Users, b"u9"), None);
        // A wrong value is a conflict as much as a wrong absence.
        let err = backend
            .commit(
                Batch::default()
                    .expect(Collection::Users, "nobody", None)
                    .expect(Collection::UserNames, "alice", Some(b"u2".to_vec()))
                    .put(Collection::UserNames, "alice", "u3"),
            )
            .unwrap_err();
        assert!(matches!(err, BackendError::Conflict { collection: Collection::UserNames }), "{err}");
        assert_eq!(value(&*backend, Collection::UserNames, b"alice").as_deref(), Some(&b"u1"[..]));
        backend
            .commit(Batch::default().expect(Collection::UserNames, "alice", Some(b"u1".to_vec())).put(
                Collection::UserNames,
                "alice",
                "u2",
            ))
            .unwrap();
        assert_eq!(value(&*backend, Collection::UserNames, b"alice").as_deref(), Some(&b"u2"[..]));
    });
}

#[test]
fn concurrent_writers_conflict_instead_of_losing_updates() {
    both(|subject| {
        // Two handles on one store: for PostgreSQL, as two replicas would be.
        let backends = match subject {
            Subject::Sled(_) => {
                let one = subject.open();
                vec![one.clone(), one]
            }
            Subject::Postgres(_) => vec![subject.open(), subject.open()],
        };
        const THREADS: u64 = 6;
        const INCREMENTS: u64 = 25;
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let backend = backends[t as usize % 2].clone();
                scope.spawn(move || {
                    for _ in 0..INCREMENTS {
                        loop {
                            let before = backend.get(Collection::Meta, b"counter").unwrap();
                            let n =
                                before.as_deref().map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
                            let batch = Batch::default().expect(Collection::Meta, "counter", before).put(
                                Collection::Meta,
                                "counter",
                                (n + 1).to_be_bytes(),
                            );
                            match backend.commit(batch) {
                                Ok(()) => break,
                                Err(BackendError::Conflict { .. }) => continue,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                });
            }
        });
        let n = value(&*backends[0], Collection::Meta, b"counter").unwrap();
        assert_eq!(u64::from_be_bytes(n.try_into().unwrap()), THREADS * INCREMENTS, "no update was lost");

        // Claiming a free name: exactly one of many wins.
        let winners: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8u8)
                .map(|t| {
                    let backend = backends[usize::from(t) % 2].clone();
                    scope.spawn(move || {
                        match backend.commit(
                            Batch::default()
                                .expect(Collection::UserNames, "root", None)
                                .put(Collection::UserNames, "root", [t])
                                .put(Collection::Users, [b'u', t], "claimed"),
                        ) {
                            Ok(()) => true,
                            Err(BackendError::Conflict { .. }) => false,
                            Err(e) => panic!("{e}"),
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
        let owner = value(&*backends[1], Collection::UserNames, b"root").unwrap()[0];
        let claimed = backends[1].scan(Collection::Users, b"u", None, 100).unwrap();
        assert_eq!(claimed.len(), 1, "the losers' other changes were not applied either");
        assert_eq!(claimed[0].0, vec![b'u', owner]);
    });
}

/// Two handles on one store: for PostgreSQL, as two replicas would be.
fn two_handles(subject: &Subject) -> [Arc<dyn Backend>; 2] {
    match subject {
        Subject::Sled(_) => {
            let one = subject.open();
            [one.clone(), one]
        }
        Subject::Postgres(_) => [subject.open(), subject.open()],
    }
}

fn number(bytes: Option<Vec<u8>>) -> i64 {
    bytes.map_or(0, |b| i64::from_be_bytes(b.try_into().unwrap()))
}

#[test]
fn transfers_between_keys_keep_the_total_and_lose_no_update() {
    both(|subject| {
        let backends = two_handles(subject);
        const ACCOUNTS: u8 = 4;
        const THREADS: usize = 12;
        const TRANSFERS: usize = 20;
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let backend = backends[t % 2].clone();
                scope.spawn(move || {
                    for i in 0..TRANSFERS {
                        // From one account to the next, and a count of the
                        // transfers: three keys checked and written together.
                        let from = [b'a', ((t + i) % usize::from(ACCOUNTS)) as u8];
                        let to = [b'a', ((t + i + 1) % usize::from(ACCOUNTS)) as u8];
                        loop {
                            let read = |k: &[u8]| backend.get(Collection::Meta, k).unwrap();
                            let (a, b, n) = (read(&from), read(&to), read(b"transfers"));
                            let batch = Batch::default()
                                .expect(Collection::Meta, from, a.clone())
                                .expect(Collection::Meta, to, b.clone())
                                .expect(Collection::Meta, "transfers", n.clone())
                                .put(Collection::Meta, from, (number(a) - 1).to_be_bytes())
                                .put(Collection::Meta, to, (number(b) + 1).to_be_bytes())
                                .put(Collection::Meta, "transfers", (number(n) + 1).to_be_bytes());
                            match backend.commit(batch) {
                                Ok(()) => break,
                                Err(BackendError::Conflict { .. }) => continue,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                });
            }
        });
        let read = |k: &[u8]| backends[1].get(Collection::Meta, k).unwrap();
        let total: i64 = (0..ACCOUNTS).map(|a| number(read(&[b'a', a]))).sum();
        assert_eq!(total, 0, "money was made or lost");
        assert_eq!(number(read(b"transfers")), (THREADS * TRANSFERS) as i64, "no update was lost");
    });
}

#[test]
fn many_claimers_of_one_absent_key_have_one_winner_each_round() {
    both(|subject| {
        let backends = two_handles(subject);
        for round in 0..10u8 {
            let key = [b'k', round];
            let barrier = std::sync::Barrier::new(16);
            let winners: Vec<bool> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..16u8)
                    .map(|t| {
                        let backend = backends[usize::from(t) % 2].clone();
                        let barrier = &barrier;
                        scope.spawn(move || {
                            barrier.wait();
                            let batch = Batch::default()
                                .expect(Collection::Subnets, key, None)
                                .put(Collection::Subnets, key, [t])
                                .put(Collection::Sessions, [round, t], "holds it");
                            match backend.commit(batch) {
                                Ok(()) => true,
                                Err(BackendError::Conflict { collection: Collection::Subnets }) => false,
                                Err(e) => panic!("{e}"),
                            }
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(winners.iter().filter(|w| **w).count(), 1, "round {round}: {winners:?}");
            let owner = value(&*backends[0], Collection::Subnets, &key).unwrap()[0];
            assert!(winners[usize::from(owner)]);
            let holders = backends[0].scan(Collection::Sessions, &[round], None, 100).unwrap();
            assert_eq!(holders, vec![(vec![round, owner], b"holds it".to_vec())]);
        }
    });
}

#[test]
fn an_expected_absence_holds_until_the_commit_even_when_not_written() {
    both(|subject| {
        let backends = two_handles(subject);
        // Write skew: each of two commits needs the key the other writes to
        // be absent. Run one after the other, the second always fails; run
        // at once, at most one may succeed.
        for round in 0..40u8 {
            let (a, b) = ([b'a', round], [b'b', round]);
            let barrier = std::sync::Barrier::new(2);
            let won: Vec<bool> = std::thread::scope(|scope| {
                let handles: Vec<_> = [(a, b), (b, a)]
                    .into_iter()
                    .enumerate()
                    .map(|(t, (absent, write))| {
                        let backend = backends[t].clone();
                        let barrier = &barrier;
                        scope.spawn(move || {
                            barrier.wait();
                            let batch = Batch::default().expect(Collection::Tokens, absent, None).put(
                                Collection::Tokens,
                                write,
                                "on",
                            );
                            match backend.commit(batch) {
                                Ok(()) => true,
                                Err(BackendError::Conflict { .. }) => false,
                                Err(e) => panic!("{e}"),
                            }
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(won.iter().any(|w| *w), "round {round}: nobody won although one must");
            assert!(!won.iter().all(|w| *w), "round {round}: both commits saw the other's key absent");
            // The placeholder that guarded the absence is gone.
            let stored = backends[0].scan(Collection::Tokens, &[], None, 1000).unwrap();
            assert_eq!(stored.len(), usize::from(round) + 1, "{stored:?}");
        }
    });
}

#[test]
fn a_group_commits_the_batches_that_hold_and_reports_the_others() {
    both(|subject| {
        let backend = subject.open();
        backend.commit(Batch::default().put(Collection::Users, "taken", "x")).unwrap();
        let claim = |key: &str, value: &str| {
            Batch::default().expect(Collection::Users, key, None).put(Collection::Users, key, value)
        };
        // The second fails its own expectation; the third claims what the
        // first just wrote, so it fails too; the fourth holds.
        let batches =
            vec![claim("u1", "first"), claim("taken", "second"), claim("u1", "third"), claim("u4", "fourth")];
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        // Counts the batches that held in the locked key.
        let finish: Arc<ferry_cloud::store::backend::Finish> = {
            let seen = seen.clone();
            Arc::new(move |held: &[bool], locked: Option<&[u8]>| {
                seen.lock().unwrap().push((held.to_vec(), locked.map(<[u8]>::to_vec)));
                let before: usize = locked.map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap());
                let count = before + held.iter().filter(|h| **h).count();
                Batch::default().put(Collection::Meta, "log", count.to_string())
            })
        };
        let lock = || Some((Collection::Meta, b"log".to_vec()));
        let outcomes = backend.commit_group(batches.clone(), lock(), finish.clone()).unwrap();
        let kinds: Vec<Option<Collection>> = outcomes
            .iter()
            .map(|o| match o {
                Ok(()) => None,
                Err(BackendError::Conflict { collection }) => Some(*collection),
                Err(e) => panic!("{e}"),
            })
            .collect();
        assert_eq!(kinds, [None, Some(Collection::Users), Some(Collection::Users), None]);
        assert!(
            seen.lock().unwrap().iter().all(|h| h == &(vec![true, false, false, true], None)),
            "{seen:?}"
        );
        assert_eq!(value(&*backend, Collection::Users, b"u1").as_deref(), Some(&b"first"[..]));
        assert_eq!(value(&*backend, Collection::Users, b"taken").as_deref(), Some(&b"x"[..]));
        assert_eq!(value(&*backend, Collection::Users, b"u4").as_deref(), Some(&b"fourth"[..]));
        assert_eq!(value(&*backend, Collection::Meta, b"log").as_deref(), Some(&b"2"[..]));
        // The locked key's value reaches `finish`.
        backend.commit_group(vec![claim("u6", "sixth")], lock(), finish).unwrap();
        assert_eq!(seen.lock().unwrap().last().unwrap(), &(vec![true], Some(b"2".to_vec())));
        assert_eq!(value(&*backend, Collection::Meta, b"log").as_deref(), Some(&b"3"[..]));
        // When what `finish` adds does not hold, nothing of the group lands.
        let refused: Arc<ferry_cloud::store::backend::Finish> = Arc::new(|_: &[bool], _: Option<&[u8]>| {
            Batch::default().expect(Collection::Meta, "log", None).put(Collection::Meta, "log", "0")
        });
        let err = backend.commit_group(vec![claim("u5", "fifth")], None, refused).unwrap_err();
        assert!(matches!(err, BackendError::Conflict { collection: Collection::Meta }), "{err}");
        assert_eq!(value(&*backend, Collection::Users, b"u5"), None);
        assert_eq!(value(&*backend, Collection::Meta, b"log").as_deref(), Some(&b"3"[..]));
        // Groups are durable as commits are.
        drop(backend);
        let backend = subject.open();
        assert_eq!(value(&*backend, Collection::Users, b"u4").as_deref(), Some(&b"fourth"[..]));
    });
}

/// A batch that fails after some of its changes were applied must leave no
/// trace that the batches after it could see, and a batch sees what the
/// ones before it in the group wrote.
#[test]
fn a_failing_batch_leaves_nothing_the_next_batches_of_its_group_see() {
    both(|subject| {
        let backend = subject.open();
        let conflicted = |o: &Result<(), BackendError>| matches!(o, Err(BackendError::Conflict { .. }));
        let none: Arc<ferry_cloud::store::backend::Finish> =
            Arc::new(|_: &[bool], _: Option<&[u8]>| Batch::default());
        let batches = vec![
            // Puts "a" (first in key order), then fails on "b", absent.
            Batch::default().put(Collection::Users, "a", "from the failed batch").expect(
                Collection::Users,
                "b",
                Some(b"5".to_vec()),
            ),
            // Holds only if the failed batch's "a" is gone.
            Batch::default().expect(Collection::Users, "a", None).put(Collection::Users, "a", "claimed"),
            // Sees the batch before it.
            Batch::default().expect(Collection::Users, "a", Some(b"claimed".to_vec())).put(
                Collection::Users,
                "a",
                "updated",
            ),
            // Does not hold: "a" is there now.
            Batch::default().expect(Collection::Users, "a", None).put(Collection::Users, "c", "never"),
        ];
        let outcomes = backend.commit_group(batches, None, none.clone()).unwrap();
        assert!(conflicted(&outcomes[0]) && conflicted(&outcomes[3]), "{outcomes:?}");
        assert!(outcomes[1].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert_eq!(value(&*backend, Collection::Users, b"a").as_deref(), Some(&b"updated"[..]));
        assert_eq!(value(&*backend, Collection::Users, b"b"), None);
        assert_eq!(value(&*backend, Collection::Users, b"c"), None);
        // Every batch holding: all of them land.
        let batches = (0..5)
            .map(|i| {
                Batch::default().expect(Collection::Users, format!("k{i}"), None).put(
                    Collection::Users,
                    format!("k{i}"),
                    "v",
                )
            })
            .collect();
        let outcomes = backend.commit_group(batches, None, none).unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(backend.scan(Collection::Users, b"k", None, 10).unwrap().len(), 5);
    });
}

/// A batch whose expectations contradict each other is never sent; the
/// others around it keep their own outcomes, and the lock's value reaches
/// `finish`. When what `finish` adds fails, nothing of a group of several
/// batches lands.
#[test]
fn a_contradictory_batch_among_others_and_a_failing_finish() {
    both(|subject| {
        let backend = subject.open();
        backend.commit(Batch::default().put(Collection::Meta, "head", "7")).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let finish: Arc<ferry_cloud::store::backend::Finish> = {
            let seen = seen.clone();
            Arc::new(move |held: &[bool], locked: Option<&[u8]>| {
                seen.lock().unwrap().push((held.to_vec(), locked.map(<[u8]>::to_vec)));
                Batch::default().put(Collection::Meta, "head", "8")
            })
        };
        let put = |key: &str| {
            Batch::default().expect(Collection::Users, key, None).put(Collection::Users, key, "v")
        };
        let contradictory = Batch::default()
            .expect(Collection::Users, "x", None)
            .expect(Collection::Users, "x", Some(b"1".to_vec()))
            .put(Collection::Users, "x", "never");
        let lock = Some((Collection::Meta, b"head".to_vec()));
        let outcomes =
            backend.commit_group(vec![put("p"), contradictory, put("q")], lock.clone(), finish).unwrap();
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(matches!(outcomes[1], Err(BackendError::Conflict { .. })), "{outcomes:?}");
        assert_eq!(seen.lock().unwrap().last().unwrap(), &(vec![true, false, true], Some(b"7".to_vec())));
        assert_eq!(value(&*backend, Collection::Users, b"q").as_deref(), Some(&b"v"[..]));
        assert_eq!(value(&*backend, Collection::Users, b"x"), None);
        assert_eq!(value(&*backend, Collection::Meta, b"head").as_deref(), Some(&b"8"[..]));
        let refused: Arc<ferry_cloud::store::backend::Finish> = Arc::new(|_: &[bool], _: Option<&[u8]>| {
            Batch::default().expect(Collection::Meta, "head", None).put(Collection::Meta, "head", "0")
        });
        let err = backend.commit_group(vec![put("r"), put("s")], lock.clone(), refused).unwrap_err();
        assert!(matches!(err, BackendError::Conflict { collection: Collection::Meta }), "{err}");
        assert_eq!(value(&*backend, Collection::Users, b"r"), None);
        assert_eq!(value(&*backend, Collection::Users, b"s"), None);
        assert_eq!(value(&*backend, Collection::Meta, b"head").as_deref(), Some(&b"8"[..]));
        // A last batch that expects a value: refused when the value is
        // another, committed with the group's batches when it holds.
        let expecting = |old: &'static str| -> Arc<ferry_cloud::store::backend::Finish> {
            Arc::new(move |_: &[bool], _: Option<&[u8]>| {
                Batch::default()
                    .expect(Collection::Meta, "head", Some(old.as_bytes().to_vec()))
                    .put(Collection::Meta, "head", "9")
                    .put(Collection::Users, "finished", old)
            })
        };
        let err = backend.commit_group(vec![put("t"), put("u")], lock.clone(), expecting("7")).unwrap_err();
        assert!(matches!(err, BackendError::Conflict { collection: Collection::Meta }), "{err}");
        assert_eq!(value(&*backend, Collection::Users, b"t"), None);
        assert_eq!(value(&*backend, Collection::Users, b"finished"), None);
        let outcomes = backend.commit_group(vec![put("t"), put("u")], lock, expecting("8")).unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(value(&*backend, Collection::Users, b"u").as_deref(), Some(&b"v"[..]));
        assert_eq!(value(&*backend, Collection::Users, b"finished").as_deref(), Some(&b"8"[..]));
        assert_eq!(value(&*backend, Collection::Meta, b"head").as_deref(), Some(&b"9"[..]));
    });
}

/// `Batch::impossible` fails whatever its key holds (absent, empty, or
/// anything else), alone or as what a group's `finish` adds, and then
/// nothing of the group lands.
#[test]
fn an_impossible_batch_never_holds_and_aborts_its_group() {
    both(|subject| {
        let backend = subject.open();
        let impossible = || Batch::impossible(Collection::Meta, "k");
        fn conflict<T>(r: Result<T, BackendError>) -> bool {
            matches!(r, Err(BackendError::Conflict { .. }))
        }
        for stored in [None, Some(&b""[..]), Some(&b"x"[..])] {
            if let Some(bytes) = stored {
                backend.commit(Batch::default().put(Collection::Meta, "k", bytes)).unwrap();
            }
            assert!(conflict(backend.commit(impossible())), "alone, over {stored:?}");
            assert!(
                conflict(backend.commit(impossible().put(Collection::Users, "alone", "v"))),
                "with a change, over {stored:?}"
            );
            let finish: Arc<ferry_cloud::store::backend::Finish> =
                Arc::new(move |_: &[bool], _: Option<&[u8]>| Batch::impossible(Collection::Meta, "k"));
            let batches = vec![Batch::default().put(Collection::Users, "grouped", "v")];
            for lock in [None, Some((Collection::Meta, b"k".to_vec()))] {
                let outcome = backend.commit_group(batches.clone(), lock, finish.clone());
                assert!(conflict(outcome), "a group, over {stored:?}");
            }
            assert_eq!(value(&*backend, Collection::Users, b"alone"), None);
            assert_eq!(value(&*backend, Collection::Users, b"grouped"), None);
            assert_eq!(value(&*backend, Collection::Meta, b"k").as_deref(), stored);
        }
    });
}

/// An allowed action by "tester", for the audit tests.
fn event(action: &str) -> ferry_cloud::audit::Event {
    ferry_cloud::audit::Event {
        actor: "tester".into(),
        action: action.into(),
        allowed: true,
        source: None,
        session: None,
        gateway: None,
        detail: None,
    }
}

/// The audit head record holding exactly empty bytes (unreadable) makes a
/// group give up on it and link from the last entry: the commit lands with
/// its entry and the head is written again. (Its "cannot hold" batch used
/// to expect empty bytes there, which held: the group committed without
/// its entries.)
#[test]
fn an_audited_commit_over_an_empty_head_record_still_links_its_entry() {
    use ferry_cloud::audit;
    both(|subject| {
        let store = Store::with_backend(subject.open()).unwrap();
        assert_eq!(audit::append(&store, 1, event("first")).unwrap().seq, 1);
        // The head record's key (private to the audit module).
        store.backend().commit(Batch::default().put(Collection::Meta, "audit_head", "")).unwrap();
        let batch = Batch::default().put(Collection::Users, "changed", "v");
        let entry = audit::commit_with(&store, 2, event("second"), batch).unwrap();
        assert_eq!(entry.seq, 2);
        assert_eq!(value(store.backend(), Collection::Users, b"changed").as_deref(), Some(&b"v"[..]));
        assert_eq!(audit::verify(&store).unwrap().unwrap().entries, 2);
    });
}

#[test]
fn audited_commits_grouped_together_keep_their_own_outcomes_and_one_chain() {
    use ferry_cloud::audit::{self, Submission};
    both(|subject| {
        let [one, two] = two_handles(subject);
        let (store, other) = (Store::with_backend(one).unwrap(), Store::with_backend(two).unwrap());
        let claim = |key: &str| {
            Batch::default().expect(Collection::Users, key, None).put(Collection::Users, key, "claimed")
        };
        audit::append(&store, 1, event("first")).unwrap();
        store.backend().commit(Batch::default().put(Collection::Users, "taken", "x")).unwrap();
        let outcomes = audit::commit_together(
            &store,
            vec![
                Submission { time_ms: 2, events: vec![event("a1"), event("a2")], batch: claim("a") },
                Submission { time_ms: 3, events: vec![event("refused")], batch: claim("taken") },
                Submission { time_ms: 4, events: vec![event("c")], batch: claim("c") },
                // Wants what the first of the group just claimed.
                Submission { time_ms: 5, events: vec![event("again")], batch: claim("a") },
            ],
        );
        let seqs: Vec<Result<Vec<u64>, String>> = outcomes
            .iter()
            .map(|o| match o {
                Ok(entries) => Ok(entries.iter().map(|e| e.seq).collect()),
                Err(e) => Err(e.to_string()),
            })
            .collect();
        assert_eq!(seqs[0], Ok(vec![2, 3]));
        assert!(
            matches!(
                &outcomes[1],
                Err(audit::AuditError::Store(BackendError::Conflict { collection: Collection::Users }))
            ),
            "{seqs:?}"
        );
        assert_eq!(seqs[2], Ok(vec![4]), "linked right after the entries that landed");
        assert!(outcomes[3].is_err(), "{seqs:?}");
        assert_eq!(value(store.backend(), Collection::Users, b"c").as_deref(), Some(&b"claimed"[..]));
        let actions: Vec<String> =
            audit::entries(&store, 0, 100).unwrap().into_iter().map(|e| e.event.action).collect();
        assert_eq!(actions, ["first", "a1", "a2", "c"]);
        assert_eq!(audit::verify(&store).unwrap().unwrap().entries, 4);
        // Groups of two processes (replicas) at once still make one chain.
        std::thread::scope(|scope| {
            for (t, store) in [&store, &other].into_iter().enumerate() {
                scope.spawn(move || {
                    for i in 0..15 {
                        let submissions = (0..3)
                            .map(|j| Submission {
                                time_ms: 10,
                                events: vec![event("load")],
                                batch: claim(&format!("{t}-{i}-{j}")),
                            })
                            .collect();
                        for outcome in audit::commit_together(store, submissions) {
                            outcome.unwrap();
                        }
                    }
                });
            }
        });
        assert_eq!(audit::verify(&other).unwrap().unwrap().entries, 4 + 2 * 15 * 3);
    });
}

#[test]
fn reads_of_many_keys_answer_each_in_order_and_stay_in_their_collection() {
    both(|subject| {
        let backend = subject.open();
        backend
            .commit(
                Batch::default().put(Collection::Sessions, "a", "1").put(Collection::Sessions, "c", "3").put(
                    Collection::Users,
                    "b",
                    "other collection",
                ),
            )
            .unwrap();
        let keys: Vec<Vec<u8>> = ["c", "b", "a", "a", "zz"].iter().map(|k| k.as_bytes().to_vec()).collect();
        assert_eq!(
            backend.get_many(Collection::Sessions, &keys).unwrap(),
            vec![Some(b"3".to_vec()), None, Some(b"1".to_vec()), Some(b"1".to_vec()), None]
        );
        assert!(backend.get_many(Collection::Sessions, &[]).unwrap().is_empty());
        // More keys than one statement reads (PostgreSQL), in no order,
        // with repeats and absent ones.
        let mut batch = Batch::default();
        for i in (0..100u32).step_by(3) {
            batch = batch.put(Collection::Sessions, format!("k{i}"), format!("v{i}"));
        }
        backend.commit(batch).unwrap();
        let wanted: Vec<u32> = (0..75u32).map(|i| (i * 37) % 101).chain([3, 3, 0]).collect();
        let keys: Vec<Vec<u8>> = wanted.iter().map(|i| format!("k{i}").into_bytes()).collect();
        let expected: Vec<Option<Vec<u8>>> =
            wanted.iter().map(|i| (i % 3 == 0 && *i < 100).then(|| format!("v{i}").into_bytes())).collect();
        assert_eq!(backend.get_many(Collection::Sessions, &keys).unwrap(), expected);
        // Keys of several collections at once.
        let each: Vec<(Collection, Vec<u8>)> = [
            (Collection::Users, "b"),
            (Collection::Sessions, "b"),
            (Collection::Sessions, "a"),
            (Collection::Users, "a"),
        ]
        .into_iter()
        .chain((0..40u32).map(|i| (Collection::Sessions, if i % 2 == 0 { "k3" } else { "k4" })))
        .map(|(collection, key)| (collection, key.as_bytes().to_vec()))
        .collect();
        let mut expected = vec![Some(b"other collection".to_vec()), None, Some(b"1".to_vec()), None];
        expected.extend((0..40u32).map(|i| (i % 2 == 0).then(|| b"v3".to_vec())));
        assert_eq!(backend.get_each(&each).unwrap(), expected);
        assert!(backend.get_each(&[]).unwrap().is_empty());
    });
}

#[test]
fn scans_are_ordered_paged_and_prefixed() {
    both(|subject| {
        let backend = subject.open();
        let mut batch = Batch::default();
        for i in 0..10u64 {
            batch = batch.put(Collection::Audit, i.to_be_bytes().to_vec(), format!("e{i}"));
        }
        backend
            .commit(batch.put(Collection::Sessions, "s:a", "1").put(Collection::Sessions, "t:b", "2"))
            .unwrap();
        let page = backend.scan(Collection::Audit, &[], None, 4).unwrap();
        assert_eq!(
            page.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
            vec![b"e0".to_vec(), b"e1".to_vec(), b"e2".to_vec(), b"e3".to_vec()]
        );
        let next = backend.scan(Collection::Audit, &[], Some(&page[3].0), 100).unwrap();
        assert_eq!(next.len(), 6);
        assert_eq!(backend.scan(Collection::Audit, &[], None, usize::MAX).unwrap().len(), 10);
        assert_eq!(backend.scan(Collection::Audit, &[], None, 0).unwrap().len(), 0);
        assert_eq!(backend.last(Collection::Audit).unwrap().unwrap().1, b"e9".to_vec());
        assert_eq!(backend.last(Collection::Relays).unwrap(), None);
        assert_eq!(backend.scan(Collection::Sessions, b"s:", None, 10).unwrap().len(), 1);
        let values = |prefix: &[u8], after: &[u8]| {
            backend
                .scan(Collection::Sessions, prefix, Some(after), 10)
                .unwrap()
                .into_iter()
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
        };
        assert_eq!(values(b"s:", b"a"), vec![b"1".to_vec()]);
        assert_eq!(values(b"s:", b"s:"), vec![b"1".to_vec()]);
        assert_eq!(values(b"s:", b"s:a"), Vec::<Vec<u8>>::new());
        assert_eq!(values(b"s:", b"t"), Vec::<Vec<u8>>::new());
        assert_eq!(values(b"", b"s:a"), vec![b"2".to_vec()]);

        // Bytewise order, whatever the bytes: 0x00 and 0xff, and a key that
        // is a prefix of another sorts before it.
        let keys: [&[u8]; 7] =
            [&[0xff, 0xff], &[0xff], &[0x00], &[0x7f, 0x00], &[0x7f], &[0x80], &[0xff, 0x00]];
        let mut batch = Batch::default();
        for k in keys {
            batch = batch.put(Collection::Tokens, k.to_vec(), "v");
        }
        backend.commit(batch).unwrap();
        let order: Vec<Vec<u8>> =
            backend.scan(Collection::Tokens, &[], None, 100).unwrap().into_iter().map(|(k, _)| k).collect();
        let mut sorted: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        sorted.sort();
        assert_eq!(order, sorted);
        let under_ff: Vec<Vec<u8>> = backend
            .scan(Collection::Tokens, &[0xff], None, 100)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(under_ff, vec![vec![0xff], vec![0xff, 0x00], vec![0xff, 0xff]]);
        assert_eq!(backend.last(Collection::Tokens).unwrap().unwrap().0, vec![0xff, 0xff]);
    });
}

#[test]
fn ids_are_unique_across_threads_handles_and_reopening() {
    both(|subject| {
        let first: Vec<u64> = {
            let backend = subject.open();
            (0..100).map(|_| backend.generate_id().unwrap()).collect()
        };
        let backend = subject.open();
        let later = backend.generate_id().unwrap();
        assert!(first.iter().all(|&id| id < later), "an id was handed out twice");
        let second = match subject {
            Subject::Sled(_) => backend.clone(),
            Subject::Postgres(_) => subject.open(),
        };
        let ids: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let backend = if t % 2 == 0 { backend.clone() } else { second.clone() };
                    scope.spawn(move || (0..50).map(|_| backend.generate_id().unwrap()).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let unique: HashSet<u64> = ids.iter().copied().chain(first).chain([later]).collect();
        assert_eq!(unique.len(), 301);
    });
}

#[test]
fn the_store_schema_is_set_once_and_a_newer_one_is_refused() {
    both(|subject| {
        let backend = subject.open();
        let store = Store::with_backend(backend.clone()).unwrap();
        assert_eq!(store.schema_version().unwrap(), ferry_cloud::store::SCHEMA_VERSION);
        drop(store);
        // A second replica opening the same store finds it made (sled
        // allows one process: there it is the same handle again).
        let second = match subject {
            Subject::Sled(_) => backend.clone(),
            Subject::Postgres(_) => subject.open(),
        };
        Store::with_backend(second).unwrap();
        backend
            .commit(Batch::default().put(Collection::Meta, "schema_version", 99u32.to_be_bytes()))
            .unwrap();
        let Err(err) = Store::with_backend(backend) else { panic!("a newer schema was accepted") };
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    });
}

#[test]
fn postgres_refuses_a_newer_sql_schema() {
    let url = pg::fresh_database();
    drop(PostgresBackend::connect(&PgOptions::parse(&url, None).unwrap()).unwrap());
    let name = url.split('/').nth(3).unwrap().split('?').next().unwrap().to_string();
    pg::server().sql(&name, "INSERT INTO ferry_schema (version, applied_ms) VALUES (9999, 0)").unwrap();
    let Err(err) = PostgresBackend::connect(&PgOptions::parse(&url, None).unwrap()) else {
        panic!("a newer schema was accepted")
    };
    let message = err.to_string();
    assert!(message.contains("schema version 9999, newer than this ferry-cloud understands"), "{message}");
}

#[test]
fn postgres_commits_survive_a_server_crash_and_the_backend_reconnects_by_itself() {
    use ferry_lab::postgres::{Durability, Postgres};
    let server = Postgres::start(Durability::Relaxed).unwrap();
    server.create_database("crash").unwrap();
    let backend = PostgresBackend::connect(&PgOptions::parse(&server.url("crash"), None).unwrap()).unwrap();
    for i in 0..50u32 {
        backend.commit(Batch::default().put(Collection::Audit, i.to_be_bytes(), "acknowledged")).unwrap();
    }
    let id = backend.generate_id().unwrap();
    server.stop(true).unwrap();
    // While it is down, calls fail as unavailable (not as anything else).
    let down = backend.commit(Batch::default().put(Collection::Audit, 99u32.to_be_bytes(), "lost"));
    assert!(matches!(down, Err(BackendError::Unavailable(_))), "{down:?}");
    assert!(matches!(backend.get(Collection::Audit, b"x"), Err(BackendError::Unavailable(_))));
    server.resume().unwrap();
    // The same backend works again, with nothing acknowledged lost.
    let entries = backend.scan(Collection::Audit, &[], None, 100).unwrap();
    assert_eq!(entries.len(), 50, "{}", server.log());
    // More ids than one block the backend takes from the sequence at a
    // time, so that the last ones come from the sequence after the crash,
    // not from what the backend held before it.
    let after: Vec<u64> = (0..33).map(|_| backend.generate_id().unwrap()).collect();
    assert!(after.iter().all(|&a| a > id), "ids stay unique across the crash: {id} then {after:?}");
    let distinct: std::collections::BTreeSet<_> = after.iter().collect();
    assert_eq!(distinct.len(), after.len(), "{after:?}");
}
