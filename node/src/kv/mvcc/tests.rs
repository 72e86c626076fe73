//! Unit tests of MVCC rules against a real LMDB environment in a temp dir.

use super::*;

fn empty_store() -> (tempfile::TempDir, KvStore) {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::store::open_env(dir.path(), crate::store::EnvKind::State).unwrap();
    (dir, KvStore::open(env).unwrap())
}

/// A store whose history starts at revision 0, so that the tests below can
/// number the first write 1 (the rules do not depend on the starting point).
fn store() -> (tempfile::TempDir, KvStore) {
    let (dir, s) = empty_store();
    let mut wtxn = s.env().write_txn().unwrap();
    s.meta_put(&mut wtxn, META_REVISION, &0i64).unwrap();
    wtxn.commit().unwrap();
    (dir, s)
}

#[test]
fn an_empty_store_is_at_revision_1_and_the_first_write_makes_2() {
    let (_d, s) = empty_store();
    assert_eq!(s.revision(&s.env().read_txn().unwrap()).unwrap(), 1);
    assert_eq!(put(&s, "a", "1"), 2);
    assert_eq!(get(&s, "a", 0).unwrap().create_revision, 2);
}

fn apply(store: &KvStore, cmd: Command) -> Result<(i64, Outcome), KvError> {
    let env = store.env();
    let mut wtxn = env.write_txn().unwrap();
    let mut w = KvWriter::new(*store, &mut wtxn).unwrap();
    let out = w.apply(&cmd);
    match out {
        Ok(out) => {
            let rev = w.finish().unwrap();
            wtxn.commit().unwrap();
            Ok((rev, out))
        }
        Err(e) => Err(e),
    }
}

fn put(store: &KvStore, k: &str, v: &str) -> i64 {
    apply(
        store,
        Command::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
    )
    .unwrap()
    .0
}

fn range(store: &KvStore, req: RangeRequest) -> Result<RangeResponse, KvError> {
    let rtxn = store.env().read_txn().unwrap();
    store.range(&rtxn, &req)
}

fn get(store: &KvStore, k: &str, rev: i64) -> Option<KeyValue> {
    range(
        store,
        RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        },
    )
    .unwrap()
    .kvs
    .pop()
}

#[test]
fn revisions_versions_and_reads_at_old_revisions() {
    let (_d, s) = store();
    assert_eq!(put(&s, "a", "1"), 1);
    assert_eq!(put(&s, "b", "x"), 2);
    assert_eq!(put(&s, "a", "2"), 3);
    let a = get(&s, "a", 0).unwrap();
    assert_eq!(
        (
            a.create_revision,
            a.mod_revision,
            a.version,
            a.value.as_slice()
        ),
        (1, 3, 2, b"2".as_slice())
    );
    assert_eq!(get(&s, "a", 1).unwrap().value, b"1");
    assert_eq!(get(&s, "a", 2).unwrap().value, b"1");
    assert!(get(&s, "b", 1).is_none());
    let (rev, out) = apply(
        &s,
        Command::DeleteRange(DeleteRangeRequest {
            key: "a".into(),
            prev_kv: true,
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(rev, 4);
    match out {
        Outcome::DeleteRange(d) => assert_eq!(
            (d.deleted, d.prev_kvs[0].value.as_slice()),
            (1, b"2".as_slice())
        ),
        o => panic!("{o:?}"),
    }
    assert!(get(&s, "a", 0).is_none());
    assert_eq!(get(&s, "a", 3).unwrap().value, b"2");
    // Re-creating starts a new generation.
    assert_eq!(put(&s, "a", "3"), 5);
    let a = get(&s, "a", 0).unwrap();
    assert_eq!((a.create_revision, a.version), (5, 1));
    // A delete of nothing does not bump the revision.
    let (rev, _) = apply(
        &s,
        Command::DeleteRange(DeleteRangeRequest {
            key: "zz".into(),
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(rev, 5);
    assert_eq!(
        range(
            &s,
            RangeRequest {
                key: "a".into(),
                revision: 6,
                ..Default::default()
            }
        ),
        Err(KvError::FutureRevision)
    );
}

#[test]
fn ranges_with_prefix_all_keys_limit_sort_and_filters() {
    let (_d, s) = store();
    for (k, v) in [
        ("k1", "c"),
        ("k2", "b"),
        ("k3", "a"),
        ("k\0", "z"),
        ("l", "q"),
    ] {
        put(&s, k, v);
    }
    let r = range(
        &s,
        RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys,
        vec![
            b"k\0".to_vec(),
            b"k1".to_vec(),
            b"k2".to_vec(),
            b"k3".to_vec()
        ]
    );
    assert_eq!(r.count, 4);
    let all = range(
        &s,
        RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(all.count, 5);
    let lim = range(
        &s,
        RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            limit: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((lim.kvs.len(), lim.more, lim.count), (2, true, 4));
    let by_value = range(
        &s,
        RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            sort_target: SortTarget::Value,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(by_value.kvs[0].value, b"a");
    let desc = range(
        &s,
        RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            sort_order: SortOrder::Descend,
            limit: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (desc.kvs[0].key.as_slice(), desc.more),
        (b"k3".as_slice(), true)
    );
    let filtered = range(
        &s,
        RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            min_mod_revision: 2,
            max_mod_revision: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(filtered.kvs.len(), 2);
    assert_eq!(filtered.count, 4, "count ignores filters as etcd does");
    let keys_only = range(
        &s,
        RangeRequest {
            key: "k1".into(),
            keys_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(keys_only.kvs[0].value.is_empty());
    let count_only = range(
        &s,
        RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            count_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((count_only.kvs.len(), count_only.count), (0, 4));
    let backwards = range(
        &s,
        RangeRequest {
            key: "l".into(),
            range_end: "k".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(backwards.count, 0);
}

#[test]
fn txn_compares_branches_and_sees_its_own_writes_at_one_revision() {
    let (_d, s) = store();
    put(&s, "a", "1");
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Value("1".into()),
            key: "a".into(),
            range_end: vec![],
        }],
        success: vec![
            RequestOp::Put(PutRequest {
                key: "a".into(),
                value: "2".into(),
                ..Default::default()
            }),
            RequestOp::Put(PutRequest {
                key: "b".into(),
                value: "x".into(),
                ..Default::default()
            }),
            RequestOp::Range(RangeRequest {
                key: "a".into(),
                ..Default::default()
            }),
        ],
        failure: vec![],
    };
    let (rev, out) = apply(&s, Command::Txn(txn.clone())).unwrap();
    assert_eq!(rev, 2);
    let Outcome::Txn(t) = out else { panic!() };
    assert!(t.succeeded);
    let ResponseOp::Range(r) = &t.responses[2] else {
        panic!()
    };
    assert_eq!(
        (r.kvs[0].value.as_slice(), r.kvs[0].mod_revision),
        (b"2".as_slice(), 2)
    );
    assert_eq!(get(&s, "b", 0).unwrap().mod_revision, 2);
    // Same compare now fails and runs the empty failure branch without a new revision.
    let (rev, out) = apply(&s, Command::Txn(txn)).unwrap();
    assert_eq!(rev, 2);
    let Outcome::Txn(t) = out else { panic!() };
    assert!(!t.succeeded);
    // Value compare on a missing key fails; version compare treats it as zero.
    let missing = |target| TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target,
            key: "nope".into(),
            range_end: vec![],
        }],
        ..Default::default()
    };
    let Outcome::Txn(t) = apply(&s, Command::Txn(missing(CompareTarget::Value(vec![]))))
        .unwrap()
        .1
    else {
        panic!()
    };
    assert!(!t.succeeded);
    let Outcome::Txn(t) = apply(&s, Command::Txn(missing(CompareTarget::Version(0))))
        .unwrap()
        .1
    else {
        panic!()
    };
    assert!(t.succeeded);
}

#[test]
fn a_failing_operation_aborts_the_whole_txn() {
    let (_d, s) = store();
    let txn = TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest {
                key: "a".into(),
                value: "1".into(),
                ..Default::default()
            }),
            RequestOp::Put(PutRequest {
                key: "b".into(),
                ignore_value: true,
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    assert_eq!(apply(&s, Command::Txn(txn)), Err(KvError::KeyNotFound));
    assert!(get(&s, "a", 0).is_none());
    let rtxn = s.env().read_txn().unwrap();
    assert_eq!(s.revision(&rtxn).unwrap(), 0);
}

#[test]
fn duplicate_keys_and_too_many_ops_are_refused_before_proposal() {
    let p = |k: &str| {
        RequestOp::Put(PutRequest {
            key: k.into(),
            ..Default::default()
        })
    };
    assert_eq!(
        check_txn(&TxnRequest {
            success: vec![p("a"), p("a")],
            ..Default::default()
        }),
        Err(KvError::DuplicateKey)
    );
    let del = RequestOp::DeleteRange(DeleteRangeRequest {
        key: "a".into(),
        range_end: "c".into(),
        prev_kv: false,
    });
    assert_eq!(
        check_txn(&TxnRequest {
            success: vec![p("b"), del],
            ..Default::default()
        }),
        Err(KvError::DuplicateKey)
    );
    assert!(check_txn(&TxnRequest {
        success: vec![p("a")],
        failure: vec![p("a")],
        ..Default::default()
    })
    .is_ok());
    let many: Vec<_> = (0..129).map(|i| p(&i.to_string())).collect();
    assert_eq!(
        check_txn(&TxnRequest {
            success: many,
            ..Default::default()
        }),
        Err(KvError::TooManyOps)
    );
}

#[test]
fn compaction_removes_superseded_history_and_keeps_current_state() {
    let (_d, s) = store();
    put(&s, "a", "1"); // 1
    put(&s, "a", "2"); // 2
    put(&s, "b", "1"); // 3
    apply(
        &s,
        Command::DeleteRange(DeleteRangeRequest {
            key: "b".into(),
            ..Default::default()
        }),
    )
    .unwrap(); // 4
    put(&s, "a", "3"); // 5
    apply(
        &s,
        Command::Compact(CompactionRequest {
            revision: 4,
            physical: true,
        }),
    )
    .unwrap();
    assert_eq!(
        range(
            &s,
            RangeRequest {
                key: "a".into(),
                revision: 3,
                ..Default::default()
            }
        ),
        Err(KvError::Compacted)
    );
    assert_eq!(get(&s, "a", 4).unwrap().value, b"2");
    assert!(get(&s, "b", 4).is_none());
    assert_eq!(get(&s, "a", 5).unwrap().value, b"3");
    // Only the rows still reachable remain: a@2, a@5, and b's tombstone at exactly 4.
    let rtxn = s.env().read_txn().unwrap();
    let rows = s.tables()[0].1.len(&rtxn).unwrap();
    assert_eq!(rows, 3);
    drop(rtxn);
    assert_eq!(
        apply(
            &s,
            Command::Compact(CompactionRequest {
                revision: 4,
                physical: true
            })
        ),
        Err(KvError::Compacted)
    );
    assert_eq!(
        apply(
            &s,
            Command::Compact(CompactionRequest {
                revision: 9,
                physical: true
            })
        ),
        Err(KvError::FutureRevision)
    );
    // A later compaction removes rows superseded after the first one.
    put(&s, "a", "4"); // 6
    apply(
        &s,
        Command::Compact(CompactionRequest {
            revision: 6,
            physical: true,
        }),
    )
    .unwrap();
    let rtxn = s.env().read_txn().unwrap();
    assert_eq!(s.tables()[0].1.len(&rtxn).unwrap(), 1);
    assert_eq!(s.key_count(&rtxn).unwrap(), 1);
}

#[test]
fn events_replay_history_with_prev_kv_and_whole_revisions() {
    let (_d, s) = empty_store();
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
    apply(
        &s,
        Command::Txn(TxnRequest {
            success: vec![
                RequestOp::Put(PutRequest {
                    key: "b".into(),
                    value: "x".into(),
                    ..Default::default()
                }),
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: "a".into(),
                    ..Default::default()
                }),
            ],
            ..Default::default()
        }),
    )
    .unwrap(); // 4: two events
    let rtxn = s.env().read_txn().unwrap();
    let (all, last) = s.events(&rtxn, 1, 100, usize::MAX).unwrap();
    assert_eq!(last, 4);
    let summary: Vec<_> = all
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8(e.kv.key.clone()).unwrap(),
                e.kv.mod_revision,
                e.prev_kv.as_ref().map(|p| p.mod_revision),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventKind::Put, "a".into(), 2, None),
            (EventKind::Put, "a".into(), 3, Some(2)),
            (EventKind::Put, "b".into(), 4, None),
            (EventKind::Delete, "a".into(), 4, Some(3)),
        ]
    );
    assert_eq!(all[1].kv.version, 2);
    assert_eq!(all[1].prev_kv.as_ref().unwrap().value, b"1");
    // A limit never splits a revision: asking for 3 gives revisions 2..=4 whole.
    let (some, last) = s.events(&rtxn, 2, 3, usize::MAX).unwrap();
    assert_eq!((some.len(), last), (4, 4));
    let (some, last) = s.events(&rtxn, 2, 1, usize::MAX).unwrap();
    assert_eq!((some.len(), last), (1, 2));
    // A byte budget stops after the revision that reaches it.
    let (some, last) = s.events(&rtxn, 2, 100, 1).unwrap();
    assert_eq!((some.len(), last), (1, 2));
    let (none, last) = s.events(&rtxn, 5, 10, usize::MAX).unwrap();
    assert_eq!((none.len(), last), (0, 4));
    drop(rtxn);
    apply(
        &s,
        Command::Compact(CompactionRequest {
            revision: 3,
            physical: true,
        }),
    )
    .unwrap();
    let rtxn = s.env().read_txn().unwrap();
    assert_eq!(
        s.events(&rtxn, 2, 10, usize::MAX).unwrap_err(),
        KvError::Compacted
    );
    let (after, _) = s.events(&rtxn, 3, 10, usize::MAX).unwrap();
    assert_eq!(after.first().map(|e| e.kv.mod_revision), Some(3));
}

fn put_lease(store: &KvStore, k: &str, lease: i64) -> Result<i64, KvError> {
    apply(
        store,
        Command::Put(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        }),
    )
    .map(|(rev, _)| rev)
}

#[test]
fn leases_hold_keys_and_revoking_deletes_them_at_one_revision() {
    let (_d, s) = empty_store();
    assert_eq!(put_lease(&s, "a", 7), Err(KvError::LeaseNotFound));
    let (rev, out) = apply(&s, Command::LeaseGrant { id: 7, ttl: 10 }).unwrap();
    assert_eq!((rev, out), (1, Outcome::LeaseGranted { id: 7, ttl: 10 }));
    assert_eq!(
        apply(&s, Command::LeaseGrant { id: 7, ttl: 5 }).unwrap_err(),
        KvError::LeaseExists
    );
    put_lease(&s, "a", 7).unwrap();
    put_lease(&s, "b", 7).unwrap();
    put_lease(&s, "c", 7).unwrap();
    // Re-put without the lease detaches "c"; deleting "b" detaches it too.
    put_lease(&s, "c", 0).unwrap();
    apply(
        &s,
        Command::DeleteRange(DeleteRangeRequest {
            key: "b".into(),
            ..Default::default()
        }),
    )
    .unwrap();
    put_lease(&s, "d", 7).unwrap();
    {
        let rtxn = s.env().read_txn().unwrap();
        assert_eq!(
            s.lease_keys(&rtxn, 7).unwrap(),
            vec![b"a".to_vec(), b"d".to_vec()]
        );
        assert_eq!(get(&s, "a", 0).unwrap().lease, 7);
    }
    let (rev, out) = apply(&s, Command::LeaseRevoke { id: 7 }).unwrap();
    assert_eq!(out, Outcome::LeaseRevoked);
    assert!(get(&s, "a", 0).is_none() && get(&s, "d", 0).is_none());
    assert!(get(&s, "c", 0).is_some(), "detached keys stay");
    let rtxn = s.env().read_txn().unwrap();
    let (events, _) = s.events(&rtxn, rev, 10, usize::MAX).unwrap();
    assert_eq!(events.len(), 2, "both deletes at revision {rev}");
    assert!(events
        .iter()
        .all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == rev));
    assert!(s.lease(&rtxn, 7).unwrap().is_none());
    assert!(s.lease_keys(&rtxn, 7).unwrap().is_empty());
    drop(rtxn);
    assert_eq!(
        apply(&s, Command::LeaseRevoke { id: 7 }).unwrap_err(),
        KvError::LeaseNotFound
    );
}

#[test]
fn a_failed_txn_leaves_no_lease_attachment_behind() {
    let (_d, s) = empty_store();
    apply(&s, Command::LeaseGrant { id: 1, ttl: 10 }).unwrap();
    // Attach "x" to lease 1, then fail on an unknown lease: all rolled back.
    let env = s.env();
    let mut wtxn = env.write_txn().unwrap();
    {
        let mut nested = env.nested_write_txn(&mut wtxn).unwrap();
        let mut w = KvWriter::new(s, &mut nested).unwrap();
        let r = w.apply(&Command::Txn(TxnRequest {
            success: vec![
                RequestOp::Put(PutRequest {
                    key: "x".into(),
                    lease: 1,
                    ..Default::default()
                }),
                RequestOp::Put(PutRequest {
                    key: "y".into(),
                    lease: 2,
                    ..Default::default()
                }),
            ],
            ..Default::default()
        }));
        assert_eq!(r.unwrap_err(), KvError::LeaseNotFound);
        nested.abort();
    }
    wtxn.commit().unwrap();
    let rtxn = s.env().read_txn().unwrap();
    assert!(s.lease_keys(&rtxn, 1).unwrap().is_empty());
}

#[test]
fn a_row_read_in_place_decodes_what_a_record_encodes() {
    // Readers borrow the value from the row (RecordRef); writers encode a
    // Record: both must agree on the bytes, for every value length class.
    for value in [Vec::new(), b"v".to_vec(), vec![7u8; 300], vec![0u8; 70_000]] {
        let record = Record {
            tombstone: false,
            create_revision: 123_456_789,
            version: 42,
            lease: -7,
            value: value.clone(),
        };
        let bytes = encode(&record).unwrap();
        let read: RecordRef = decode(&bytes).unwrap();
        assert!(!read.tombstone);
        assert_eq!(
            (read.create_revision, read.version, read.lease),
            (123_456_789, 42, -7)
        );
        assert_eq!(read.value, value.as_slice());
        let kv = read.to_kv(b"k".to_vec(), 9, false);
        assert!(kv.value.is_empty());
        assert_eq!(read.to_kv(b"k".to_vec(), 9, true).value, value);
    }
    let tomb = encode(&Record {
        tombstone: true,
        create_revision: 0,
        version: 0,
        lease: 0,
        value: Vec::new(),
    })
    .unwrap();
    assert!(decode::<RecordRef>(&tomb).unwrap().tombstone);
}
