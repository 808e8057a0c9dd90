//! One contract-test suite for the feature store, run against real Redis (127.0.0.1:6379,
//! or BOOKREC_TEST_REDIS) and against the in-memory store of the embedded default.

use std::time::Duration;

use bookrec::features::{
    Applied, Expiry, FeatureStore, FeaturesError, MemoryStore, Op, Read, RedisStore, Reply, Span,
};

use crate::support::unique;

fn push(key: &str, member: &str, at: f64) -> Op {
    Op::PushRecent {
        key: key.into(),
        member: member.into(),
        at,
        max_len: 3,
        expiry: Expiry::Never,
    }
}

fn hincr(key: &str, field: &str, delta: f64, expiry: Expiry) -> Op {
    Op::HashIncr {
        key: key.into(),
        field: field.into(),
        delta,
        expiry,
    }
}

fn zincr(key: &str, member: &str, delta: f64) -> Op {
    Op::ZsetIncr {
        key: key.into(),
        member: member.into(),
        delta,
        expiry: Expiry::Never,
    }
}

fn span(partition: i32, from: i64, to: i64) -> Span {
    Span {
        partition,
        from,
        to,
    }
}

/// The contract, on keys under a fresh namespace.
async fn contract(store: &dyn FeatureStore) {
    let ns = unique("feat");
    let k = |s: &str| format!("{ns}:{s}");
    let group = k("group");

    // recent: newest first with their times, de-duplicated (the later time wins), trimmed
    // to 3; the order of a batch's ops does not matter
    let pushes = [
        ("b1", 1.0),
        ("b2", 2.0),
        ("b1", 3.0),
        ("b3", 4.0),
        ("b4", 5.0),
    ];
    let ops: Vec<Op> = pushes
        .iter()
        .map(|(b, t)| push(&k("recent"), b, *t))
        .collect();
    let r = store
        .apply(&group, &ops, &[span(0, 0, 5)])
        .await
        .expect("apply");
    assert_eq!(r, Applied::Applied);
    let want = vec![
        ("b4".to_string(), 5.0),
        ("b3".to_string(), 4.0),
        ("b1".to_string(), 3.0),
    ];
    assert_eq!(store.top(&k("recent"), 10).await.expect("recent"), want);
    assert_eq!(store.top(&k("recent"), 2).await.expect("recent"), want[..2]);
    assert!(
        store
            .top(&k("nothing"), 5)
            .await
            .expect("recent")
            .is_empty()
    );
    let reversed: Vec<Op> = pushes
        .iter()
        .rev()
        .map(|(b, t)| push(&k("recent2"), b, *t))
        .collect();
    store
        .apply(&k("group2"), &reversed, &[span(0, 0, 5)])
        .await
        .expect("apply");
    assert_eq!(store.top(&k("recent2"), 10).await.expect("recent"), want);
    // an older time does not move a member back; high-water marks only rise
    let ops = vec![
        push(&k("recent"), "b3", 0.5),
        Op::HashMax {
            key: k("progress"),
            field: "event_ms".into(),
            value: 7.0,
        },
        Op::HashMax {
            key: k("progress"),
            field: "event_ms".into(),
            value: 6.0,
        },
    ];
    store
        .apply(&k("group3"), &ops, &[span(0, 0, 1)])
        .await
        .expect("apply");
    assert_eq!(store.top(&k("recent"), 10).await.expect("recent"), want);
    assert_eq!(
        store.hash(&k("progress")).await.expect("hash"),
        vec![("event_ms".to_string(), 7.0)]
    );

    // hashes and sorted sets sum; top is highest first, ties by the greater member
    let ops = vec![
        hincr(&k("cat"), "fantasy", 1.5, Expiry::Never),
        hincr(&k("cat"), "history", 1.0, Expiry::Never),
        hincr(&k("cat"), "fantasy", 2.0, Expiry::Never),
        zincr(&k("heat"), "b1", 1.0),
        zincr(&k("heat"), "b2", 3.0),
        zincr(&k("heat"), "b3", 1.0),
    ];
    store
        .apply(&group, &ops, &[span(0, 5, 11)])
        .await
        .expect("apply");
    assert_eq!(
        store.hash(&k("cat")).await.expect("hash"),
        vec![("fantasy".to_string(), 3.5), ("history".to_string(), 1.0)]
    );
    assert_eq!(
        store.top(&k("heat"), 10).await.expect("top"),
        vec![
            ("b2".to_string(), 3.0),
            ("b3".to_string(), 1.0),
            ("b1".to_string(), 1.0)
        ]
    );
    assert_eq!(store.top(&k("heat"), 1).await.expect("top").len(), 1);

    // a replayed batch changes nothing; offsets are per partition
    let again = store
        .apply(&group, &ops, &[span(0, 5, 11)])
        .await
        .expect("replay");
    assert_eq!(again, Applied::AlreadyApplied);
    assert_eq!(store.hash(&k("cat")).await.expect("hash")[0].1, 3.5);
    // several reads at once answer as one by one
    let (cat, heat, none) = (k("cat"), k("heat"), k("none"));
    let many = store
        .read_many(&[
            Read::Hash(&cat),
            Read::Top(&heat, 2),
            Read::Hash(&none),
            Read::Top(&none, 3),
            Read::Top(&heat, 0),
        ])
        .await
        .expect("read_many");
    assert_eq!(
        many,
        vec![
            Reply::scores(store.hash(&cat).await.expect("hash")),
            Reply::scores(store.top(&heat, 2).await.expect("top")),
            Reply::default(),
            Reply::default(),
            Reply::default(),
        ]
    );
    store
        .apply(
            &group,
            &[zincr(&k("heat"), "b1", 5.0)],
            &[span(0, 11, 12), span(1, 0, 4)],
        )
        .await
        .expect("two partitions");
    let offsets = store.offsets(&group).await.expect("offsets");
    assert_eq!(
        offsets.into_iter().collect::<Vec<_>>(),
        vec![(0, 12), (1, 4)]
    );
    assert!(
        store
            .offsets(&k("other-group"))
            .await
            .expect("offsets")
            .is_empty()
    );

    // a batch that overlaps the stored offsets only in part is refused, writing nothing
    let err = store
        .apply(&group, &[zincr(&k("heat"), "b9", 1.0)], &[span(0, 10, 15)])
        .await
        .expect_err("overlap");
    assert!(
        matches!(
            err,
            FeaturesError::OffsetConflict {
                partition: 0,
                stored: 12,
                from: 10,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.top(&k("heat"), 10).await.expect("top").len(), 3);

    // a key of another type fails the whole batch before anything is written
    let err = store
        .apply(
            &group,
            &[zincr(&k("heat"), "b1", 100.0), push(&k("cat"), "x", 1.0)],
            &[span(0, 12, 13)],
        )
        .await
        .expect_err("wrong type");
    assert!(matches!(err, FeaturesError::WrongType { .. }), "{err}");
    assert_eq!(
        store.top(&k("heat"), 1).await.expect("top")[0],
        ("b1".to_string(), 6.0)
    );
    assert_eq!(store.offsets(&group).await.expect("offsets")[&0], 12);

    // a ranked list: each member's best score with that offer's reason (equal scores: the
    // smaller reason), the 3 best kept and a trimmed member's reason gone; any order of
    // the offers gives the same list
    let best = |key: &str, member: &str, score: f64, why: &str| Op::Best {
        key: k(key),
        member: member.into(),
        score,
        max_len: 3,
        reason: Some((k(&format!("why-{key}")), why.into())),
        expiry: Expiry::AfterSecs(600),
    };
    let offers = [
        ("b1", 1.0, "r1"),
        ("b2", 2.0, "r2"),
        ("b1", 3.0, "r1b"),
        ("b3", 0.5, "r3"),
        ("b4", 2.5, "r4"),
        ("b2", 2.0, "a-tie"),
        ("b1", 2.0, "r1c"),
    ];
    for (key, order) in [("rec", false), ("rec2", true)] {
        let mut ops: Vec<Op> = offers.iter().map(|(m, s, w)| best(key, m, *s, w)).collect();
        if order {
            ops.reverse();
        }
        store
            .apply(&k(&format!("g-{key}")), &ops, &[span(0, 0, 7)])
            .await
            .expect("apply");
        assert_eq!(
            store.top(&k(key), 10).await.expect("top"),
            vec![
                ("b1".to_string(), 3.0),
                ("b4".to_string(), 2.5),
                ("b2".to_string(), 2.0)
            ],
            "{key}"
        );
        let why = k(&format!("why-{key}"));
        let texts = vec![
            ("b1".to_string(), "r1b".to_string()),
            ("b2".to_string(), "a-tie".to_string()),
            ("b4".to_string(), "r4".to_string()),
        ];
        assert_eq!(store.texts(&why).await.expect("texts"), texts, "{key}");
        let list = k(key);
        let many = store
            .read_many(&[Read::Top(&list, 2), Read::Texts(&why)])
            .await
            .expect("read_many");
        assert_eq!(many[0].scores.len(), 2);
        assert_eq!(many[1].texts, texts);
        // a replay of the batch changes nothing; a worse offer later changes nothing
        store
            .apply(&k(&format!("g-{key}")), &ops, &[span(0, 0, 7)])
            .await
            .expect("replay");
        store
            .apply(
                &k(&format!("g-{key}")),
                &[best(key, "b3", 0.1, "late"), best(key, "b4", 2.5, "z")],
                &[span(0, 7, 9)],
            )
            .await
            .expect("apply");
        assert_eq!(store.top(&k(key), 10).await.expect("top").len(), 3);
        assert_eq!(store.texts(&why).await.expect("texts"), texts, "{key}");
    }
    // a reasons key that holds a sorted set is the wrong type, and nothing is written
    let err = store
        .apply(
            &k("g-wrong"),
            &[Op::Best {
                key: k("rec3"),
                member: "b1".into(),
                score: 1.0,
                max_len: 3,
                reason: Some((k("heat"), "r".into())),
                expiry: Expiry::Never,
            }],
            &[span(0, 0, 1)],
        )
        .await
        .expect_err("wrong type");
    assert!(matches!(err, FeaturesError::WrongType { .. }), "{err}");
    assert!(store.top(&k("rec3"), 10).await.expect("top").is_empty());

    // expiry: relative (renewed per write) and absolute (time buckets)
    let past = chrono::Utc::now().timestamp() - 10;
    store
        .apply(
            &group,
            &[
                hincr(&k("short"), "f", 1.0, Expiry::AfterSecs(1)),
                hincr(&k("gone"), "f", 1.0, Expiry::AtEpochSecs(past)),
                hincr(&k("later"), "f", 1.0, Expiry::AtEpochSecs(past + 3600)),
            ],
            &[span(0, 12, 13)],
        )
        .await
        .expect("apply");
    assert!(store.hash(&k("gone")).await.expect("hash").is_empty());
    assert_eq!(store.hash(&k("short")).await.expect("hash").len(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(store.hash(&k("short")).await.expect("hash").is_empty());
    assert_eq!(store.hash(&k("later")).await.expect("hash").len(), 1);
}

#[tokio::test]
async fn the_in_memory_store_keeps_the_contract() {
    contract(&MemoryStore::new()).await;
}

pub fn redis_url() -> String {
    std::env::var("BOOKREC_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn redis_keeps_the_contract() {
    let store = RedisStore::connect(&redis_url(), Duration::from_secs(5))
        .await
        .expect("Redis on 127.0.0.1:6379 (scripts/test starts it)");
    contract(&store).await;
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_timeout_or_connection_error() {
    let err = match RedisStore::connect("redis://127.0.0.1:1", Duration::from_millis(500)).await {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("redis://127.0.0.1:1"), "{err}");
}
