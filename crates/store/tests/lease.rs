//! The writer's lease on a prefix, on an in-memory store (conditional writes are atomic there):
//! one holder at a time, release, takeover of a lease whose holder is gone, loss detection, and
//! racing takers. The same protocol against a real S3 server is in `s3.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use safeckpt_store::object_store::memory::InMemory;
use safeckpt_store::object_store::path::Path as ObjPath;
use safeckpt_store::{LEASE_NAME, Lease, ObjectLocation, Store, StoreError, StoreOptions, exists, put_bytes};

fn prefix() -> ObjectLocation {
    let store = Store::from_object_store(Arc::new(InMemory::new()), "memory://", StoreOptions::default());
    ObjectLocation { store, path: ObjPath::parse("runs/exp1").unwrap() }
}

const TTL: Duration = Duration::from_millis(1200);

#[test]
fn one_holder_at_a_time_until_released() {
    let p = prefix();
    let a = Lease::acquire(&p, "writer A", TTL).unwrap();
    assert!(exists(&p.join(LEASE_NAME)).unwrap());
    assert_eq!(a.taken_over_from(), None);
    // Held and renewed: refused, naming the holder (a takeover would have succeeded instead).
    match Lease::acquire(&p, "writer B", TTL) {
        Err(StoreError::Locked { holder, url }) => {
            assert_eq!(holder, "writer A");
            assert!(url.ends_with("runs/exp1/.lock"), "{url}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    // Renewals keep it valid for many times its time-to-live.
    std::thread::sleep(TTL * 3);
    a.check().unwrap();
    a.release().unwrap();
    assert!(!exists(&p.join(LEASE_NAME)).unwrap(), "release removes the lease object");
    let t = Instant::now();
    let b = Lease::acquire(&p, "writer B", TTL).unwrap();
    assert!(t.elapsed() < TTL, "a free prefix is taken at once, not after a time-to-live");
    drop(b);
    assert!(!exists(&p.join(LEASE_NAME)).unwrap(), "drop releases too");
}

#[test]
fn a_lease_left_by_a_dead_holder_is_taken_over_after_its_ttl() {
    let p = prefix();
    // A holder that died: its record is there and never renewed.
    let record = format!(
        r#"{{"holder":"pid 7 on gone-host","token":"ffff","ttl_ms":{},"renewal":3,"written_unix_ms":0}}"#,
        TTL.as_millis()
    );
    put_bytes(&p.join(LEASE_NAME), record.into_bytes()).unwrap();
    let t = Instant::now();
    let lease = Lease::acquire(&p, "writer C", TTL).unwrap();
    assert!(t.elapsed() >= TTL, "waited a whole time-to-live: {:?}", t.elapsed());
    assert_eq!(lease.taken_over_from(), Some("pid 7 on gone-host"));
    lease.check().unwrap();
    // A damaged lease object is not a holder either.
    drop(lease);
    put_bytes(&p.join(LEASE_NAME), b"\x00not json".to_vec()).unwrap();
    let lease = Lease::acquire(&p, "writer D", TTL).unwrap();
    assert_eq!(lease.taken_over_from(), Some("an unreadable lease object"));
}

#[test]
fn a_holder_whose_lease_is_replaced_stops_trusting_it() {
    let p = prefix();
    let lease = Lease::acquire(&p, "writer A", TTL).unwrap();
    lease.check().unwrap();
    // Someone replaces the lease object (an operator, or a writer with a wrong clock of its own).
    put_bytes(&p.join(LEASE_NAME), b"{}".to_vec()).unwrap();
    std::thread::sleep(TTL);
    match lease.check() {
        Err(e @ StoreError::LeaseLost { .. }) => assert!(e.to_string().contains("replaced or removed"), "{e}"),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    // Dropping a lost lease leaves the other party's object alone.
    drop(lease);
    assert!(exists(&p.join(LEASE_NAME)).unwrap());
}

#[test]
fn of_racing_takers_exactly_one_wins() {
    let p = prefix();
    put_bytes(&p.join(LEASE_NAME), b"{\"stale\":true}".to_vec()).unwrap();
    let p = &p;
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| s.spawn(move || Lease::acquire(p, &format!("taker {i}"), TTL).map_err(|e| e.to_string())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(r.contains("is held by taker"), "{r}");
    }
}

#[test]
fn a_store_without_conditional_writes_is_refused_plainly() {
    let s3 = safeckpt_store::object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("b")
        .with_endpoint("http://127.0.0.1:9")
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("k")
        .with_secret_access_key("s")
        .with_conditional_put(safeckpt_store::object_store::aws::S3ConditionalPut::Disabled)
        .build()
        .unwrap();
    let store = Store::from_object_store(Arc::new(s3), "s3://b", StoreOptions::default());
    let p = ObjectLocation { store, path: ObjPath::parse("run").unwrap() };
    let err = Lease::acquire(&p, "writer", TTL).unwrap_err().to_string();
    assert!(err.contains("does not offer conditional writes"), "{err}");
}
