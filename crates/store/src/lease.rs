//! A writer's lease on an object-store prefix: the object-store counterpart of the `flock` a
//! local run directory takes, so that two writers (a restarted job while the old one still runs,
//! two jobs given the same output prefix) cannot both commit checkpoints and delete each other's.
//!
//! The lease is one small object (`.lock` under the prefix) created with a conditional put
//! (`If-None-Match: *`): exactly one writer succeeds. The holder rewrites it every third of the
//! lease's time-to-live with `If-Match` on the version it last wrote, so the object's ETag changes
//! while the holder lives. A writer that finds the lease taken watches it: if the ETag changes, the
//! holder is alive and the lease is refused naming it; if the ETag stays the same for a whole
//! time-to-live, measured on the waiting writer's own monotonic clock, the holder is gone and the
//! lease is taken over with `If-Match` on that stale version (so of several waiters only one wins).
//! Staleness is never judged by comparing clocks of different machines.
//!
//! The holder stops trusting its lease once half the time-to-live has passed without a
//! successful renewal, or as soon as a renewal finds the object changed; [`Lease::check`] then
//! fails, and callers check before every commit. A taker must first see no renewal for a whole
//! time-to-live, so a holder has stopped committing at least half a time-to-live before anyone can
//! take over.
//!
//! This needs a store with conditional writes (S3 since 2024, MinIO, R2, GCS, Azure, s3s).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::{GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::block_on;
use crate::error::{Result, StoreError};
use crate::location::ObjectLocation;

/// The lease object's name under a prefix.
pub const LEASE_NAME: &str = ".lock";

/// The longest time-to-live a lease may have (longer ones are shortened to it).
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// The most bytes of a lease object that are read (it is a few hundred).
const MAX_LEASE_LEN: u64 = 64 << 10;

/// What the lease object says. Only `token` and the changing ETag matter to the protocol; the
/// rest is for people and error messages.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    holder: String,
    token: String,
    ttl_ms: u64,
    renewal: u64,
    written_unix_ms: u64,
}

#[derive(Debug)]
struct State {
    version: UpdateVersion,
    renewal: u64,
    renewed: Instant,
    lost: Option<String>,
}

#[derive(Debug)]
struct Inner {
    loc: ObjectLocation,
    holder: String,
    token: String,
    ttl: Duration,
    state: Mutex<State>,
}

/// A held lease on a prefix; renewed in the background until dropped or [`released`](Lease::release).
#[derive(Debug)]
pub struct Lease {
    inner: Arc<Inner>,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<JoinHandle<()>>,
    taken_over: Option<String>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn new_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(unix_ms() as u128 ^ (std::process::id() as u128) << 64);
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

impl Inner {
    fn body(&self, renewal: u64) -> PutPayload {
        let record = Record {
            holder: self.holder.clone(),
            token: self.token.clone(),
            ttl_ms: self.ttl.as_millis() as u64,
            renewal,
            written_unix_ms: unix_ms(),
        };
        PutPayload::from(serde_json::to_vec(&record).unwrap_or_default())
    }

    fn put(&self, mode: PutMode, renewal: u64) -> std::result::Result<UpdateVersion, object_store::Error> {
        let opts = PutOptions { mode, ..Default::default() };
        let r = block_on(self.loc.store.inner.put_opts(&self.loc.path, self.body(renewal), opts))?;
        self.loc.store.stats.put(0);
        Ok(r.into())
    }

    /// The lease object as it is now: its version and, when readable, its record.
    fn read(&self) -> Result<Option<(UpdateVersion, Option<Record>)>> {
        let loc = &self.loc;
        let got = block_on(async {
            let r = loc.store.inner.get_opts(&loc.path, GetOptions::default()).await?;
            let version = UpdateVersion { e_tag: r.meta.e_tag.clone(), version: r.meta.version.clone() };
            if r.meta.size > MAX_LEASE_LEN {
                return Ok((version, None));
            }
            let bytes = r.bytes().await?;
            Ok::<_, object_store::Error>((version, serde_json::from_slice::<Record>(&bytes).ok()))
        });
        match got {
            Ok(v) => {
                loc.store.stats.got(0);
                Ok(Some(v))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::object(loc.url(), e)),
        }
    }

    fn renew_once(&self) {
        let (version, renewal) = {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.lost.is_some() {
                return;
            }
            (s.version.clone(), s.renewal + 1)
        };
        let result = self.put(PutMode::Update(version), renewal);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(v) => {
                s.version = v;
                s.renewal = renewal;
                s.renewed = Instant::now();
            }
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
                s.lost = Some("the lease object was replaced or removed by someone else".into());
            }
            Err(e) => {
                if s.renewed.elapsed() > self.ttl / 2 {
                    s.lost = Some(format!("it could not be renewed for {:?}: {e}", s.renewed.elapsed()));
                }
            }
        }
    }
}

/// How long a taker watches a lease before taking it over: the holder's time-to-live as its
/// record states it, at least the taker's own, and never over [`MAX_TTL`], so that a damaged
/// record cannot make the wait endless (no holder renews less often than a third of `MAX_TTL`).
fn watch_for(record_ttl_ms: Option<u64>, own: Duration) -> Duration {
    record_ttl_ms.map_or(own, |ms| Duration::from_millis(ms).clamp(own, MAX_TTL))
}

impl Lease {
    /// Takes the lease on `prefix` for `holder` (a description such as `pid 12 on host-a`), with
    /// the given time-to-live (between 300 ms and [`MAX_TTL`]): immediately when no one holds
    /// it; after watching it unrenewed for a time-to-live when its holder is gone; otherwise
    /// fails with [`StoreError::Locked`] naming the holder, as soon as a renewal is seen (within
    /// about a third of the holder's time-to-live).
    pub fn acquire(prefix: &ObjectLocation, holder: &str, ttl: Duration) -> Result<Lease> {
        Self::acquire_reporting(prefix, holder, ttl, &|_| {})
    }

    /// [`Lease::acquire`], calling `waiting` with the holder's description when the lease is
    /// taken and this call starts watching whether its holder is alive (which takes up to a
    /// time-to-live), so that a program can tell its user why it waits.
    pub fn acquire_reporting(
        prefix: &ObjectLocation,
        holder: &str,
        ttl: Duration,
        waiting: &dyn Fn(&str),
    ) -> Result<Lease> {
        let ttl = ttl.clamp(Duration::from_millis(300), MAX_TTL);
        let inner = Arc::new(Inner {
            loc: prefix.join(LEASE_NAME),
            holder: holder.to_string(),
            token: new_token(),
            ttl,
            state: Mutex::new(State {
                version: UpdateVersion { e_tag: None, version: None },
                renewal: 0,
                renewed: Instant::now(),
                lost: None,
            }),
        });
        let url = inner.loc.url();
        let mut taken_over = None;
        let version = 'acquired: loop {
            match inner.put(PutMode::Create, 0) {
                Ok(v) => break v,
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(object_store::Error::NotImplemented { .. }) => {
                    return Err(StoreError::invalid(
                        &url,
                        "this store does not offer conditional writes, which keeping one writer per prefix \
                         needs (S3 and S3-compatible servers, GCS and Azure offer them; check that \
                         AWS_CONDITIONAL_PUT is not `disabled`)",
                    ));
                }
                Err(e) => return Err(StoreError::object(&url, e)),
            }
            let Some((seen, record)) = inner.read()? else { continue };
            if record.as_ref().is_some_and(|r| r.token == inner.token) {
                // Our own create, retried after its response was lost.
                break seen;
            }
            waiting(record.as_ref().map_or("an unreadable lease object", |r| r.holder.as_str()));
            let since = Instant::now();
            let holder_ttl = watch_for(record.as_ref().map(|r| r.ttl_ms), ttl);
            loop {
                std::thread::sleep((holder_ttl / 6).min(Duration::from_secs(1)));
                match inner.read()? {
                    None => continue 'acquired,
                    Some((now, record)) if now != seen => {
                        let holder = record.map_or_else(|| "an unreadable lease object".to_string(), |r| r.holder);
                        return Err(StoreError::Locked { url, holder });
                    }
                    Some(_) if since.elapsed() >= holder_ttl => match inner.put(PutMode::Update(seen.clone()), 0) {
                        Ok(v) => {
                            taken_over = Some(
                                record
                                    .as_ref()
                                    .map_or_else(|| "an unreadable lease object".into(), |r| r.holder.clone()),
                            );
                            break 'acquired v;
                        }
                        Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
                            continue 'acquired;
                        }
                        Err(e) => return Err(StoreError::object(&url, e)),
                    },
                    Some(_) => {}
                }
            }
        };
        {
            let mut s = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            s.version = version;
            s.renewed = Instant::now();
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let renewing = inner.clone();
        let renewer = std::thread::Builder::new()
            .name("safeckpt-lease".into())
            .spawn(move || {
                loop {
                    match stopped.recv_timeout(renewing.ttl / 3) {
                        Err(RecvTimeoutError::Timeout) => renewing.renew_once(),
                        _ => return,
                    }
                }
            })
            .map_err(|e| StoreError::invalid(&url, format!("cannot start the lease's renewal thread: {e}")))?;
        Ok(Lease { inner, stop: Some(stop), renewer: Some(renewer), taken_over })
    }

    /// Fails with [`StoreError::LeaseLost`] once the lease can no longer be trusted; call it
    /// before every write that commits.
    pub fn check(&self) -> Result<()> {
        let s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = &s.lost {
            return Err(StoreError::LeaseLost { url: self.inner.loc.url(), reason: reason.clone() });
        }
        if s.renewed.elapsed() > self.inner.ttl / 2 {
            return Err(StoreError::LeaseLost {
                url: self.inner.loc.url(),
                reason: format!("it has not been renewed for {:?}", s.renewed.elapsed()),
            });
        }
        Ok(())
    }

    /// The holder whose lease expired and was taken over, if this lease was.
    pub fn taken_over_from(&self) -> Option<&str> {
        self.taken_over.as_deref()
    }

    /// The lease object.
    pub fn url(&self) -> String {
        self.inner.loc.url()
    }

    /// Stops renewing and removes the lease object if it is still ours.
    pub fn release(mut self) -> Result<()> {
        self.stop_and_remove()
    }

    fn stop_and_remove(&mut self) -> Result<()> {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        if self.inner.state.lock().unwrap_or_else(|p| p.into_inner()).lost.is_some() {
            return Ok(());
        }
        match self.inner.read()? {
            Some((_, Some(r))) if r.token == self.inner.token => crate::upload::delete(&self.inner.loc),
            _ => Ok(()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.stop_and_remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_is_bounded_whatever_the_record_says() {
        let own = Duration::from_secs(60);
        assert_eq!(watch_for(None, own), own);
        assert_eq!(watch_for(Some(1_000), own), own, "never shorter than the taker's own");
        assert_eq!(watch_for(Some(600_000), own), Duration::from_secs(600));
        assert_eq!(watch_for(Some(u64::MAX), own), MAX_TTL);
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(new_token(), new_token());
        assert_eq!(new_token().len(), 32);
    }
}
