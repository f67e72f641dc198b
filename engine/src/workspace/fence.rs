//! Staged writes are fenced, so that cleaning up after a failed or
//! abandoned write removes everything it wrote.
//!
//! A write's files land under `<table>/_staging/<write-id>/`. Aborting a
//! write does not stop what it has in flight at once: DataFusion's file
//! writers are tasks of their own, cancelled only at their next `.await`,
//! and a local store's put is a blocking call that finishes whatever
//! happens to its caller. A cleanup that simply lists and deletes the
//! staging directory can run before those files land, and leave them.
//!
//! [`Fenced`] wraps the warehouse's object store. Writes under a staging
//! directory are accepted only while their write is open
//! ([`Writes::open`]); each runs to its end in a task of its own, holding
//! a share of its write's lock. [`Writes::close`] refuses every later
//! write to that directory and waits for the ones in flight, after which
//! nothing more can appear there and a cleanup is final. Reads, and
//! objects outside staging directories, pass through untouched.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

/// The directory name writes stage their files under.
pub const STAGING: &str = "_staging";

/// The open writes, by write id.
#[derive(Debug, Default)]
pub struct Writes(Mutex<HashMap<String, Arc<RwLock<()>>>>);

/// A write's share of its lock, held until the object operation ends.
type Share = OwnedRwLockReadGuard<()>;

impl Writes {
    /// Accepts writes under `_staging/<write_id>/` until [`Writes::close`].
    pub fn open(&self, write_id: &str) {
        if let Ok(mut open) = self.0.lock() {
            open.insert(write_id.to_string(), Arc::default());
        }
    }

    /// Refuses further writes under `_staging/<write_id>/` at once; the
    /// returned future waits for those in flight to end.
    pub fn close(&self, write_id: &str) -> impl Future<Output = ()> + Send + 'static {
        let lock = self
            .0
            .lock()
            .ok()
            .and_then(|mut open| open.remove(write_id));
        async move {
            if let Some(lock) = lock {
                drop(lock.write_owned().await);
            }
        }
    }

    /// The share an operation staging files for `write_id` must hold; an
    /// error once that write is closed.
    fn enter(&self, write_id: &str) -> object_store::Result<Share> {
        let open = self.0.lock().map_err(|_| closed(write_id))?;
        open.get(write_id)
            .and_then(|lock| Arc::clone(lock).try_read_owned().ok())
            .ok_or_else(|| closed(write_id))
    }
}

fn closed(write_id: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "warehouse",
        source: format!("write {write_id} has ended; nothing more may be staged for it").into(),
    }
}

/// Runs `op` to its end in a task of its own while `share` is held, so that
/// dropping the caller neither cuts the operation short nor lets a close
/// return before it lands.
async fn guarded<T, F>(share: Option<Share>, op: F) -> object_store::Result<T>
where
    T: Send + 'static,
    F: Future<Output = object_store::Result<T>> + Send + 'static,
{
    let Some(share) = share else {
        return op.await;
    };
    tokio::spawn(async move {
        let out = op.await;
        drop(share);
        out
    })
    .await
    .map_err(|e| object_store::Error::Generic {
        store: "warehouse",
        source: Box::new(e),
    })?
}

/// The warehouse's store, with staged writes fenced (module docs).
#[derive(Debug)]
pub struct Fenced {
    inner: Arc<dyn ObjectStore>,
    /// `<warehouse>/projects`: staging directories are
    /// `projects/<project-id>/<table>/_staging/<write-id>/`.
    projects: Path,
    writes: Arc<Writes>,
}

impl Fenced {
    /// Wraps `inner`, the store of the warehouse whose projects live under
    /// `projects`; `writes` says which writes are open.
    pub fn new(inner: Arc<dyn ObjectStore>, projects: Path, writes: Arc<Writes>) -> Self {
        Self {
            inner,
            projects,
            writes,
        }
    }

    /// The write a path stages a file for, if it lies in a staging
    /// directory.
    fn staged_by(&self, path: &Path) -> Option<String> {
        let mut rest = path.prefix_match(&self.projects)?;
        let staging = rest.nth(2)?;
        let write_id = rest.next()?;
        (staging.as_ref() == STAGING).then(|| write_id.as_ref().to_string())
    }

    /// The share an operation on `paths` must hold: none outside staging
    /// directories, an error for a write that is not open.
    fn enter(&self, paths: &[&Path]) -> object_store::Result<Option<Share>> {
        match paths.iter().find_map(|p| self.staged_by(p)) {
            Some(write_id) => self.writes.enter(&write_id).map(Some),
            None => Ok(None),
        }
    }
}

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fenced({})", self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for Fenced {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let share = self.enter(&[location])?;
        let (inner, location) = (Arc::clone(&self.inner), location.clone());
        guarded(share, async move {
            inner.put_opts(&location, payload, opts).await
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let share = self.enter(&[location])?;
        let (inner, at) = (Arc::clone(&self.inner), location.clone());
        let upload = guarded(
            share,
            async move { inner.put_multipart_opts(&at, opts).await },
        )
        .await?;
        match self.staged_by(location) {
            Some(write_id) => Ok(Box::new(FencedUpload {
                upload: Some(upload),
                location: location.clone(),
                write_id,
                writes: Arc::clone(&self.writes),
            })),
            None => Ok(upload),
        }
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let share = self.enter(&[from, to])?;
        let (inner, from, to) = (Arc::clone(&self.inner), from.clone(), to.clone());
        guarded(
            share,
            async move { inner.copy_opts(&from, &to, options).await },
        )
        .await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let share = self.enter(&[from, to])?;
        let (inner, from, to) = (Arc::clone(&self.inner), from.clone(), to.clone());
        guarded(share, async move {
            inner.rename_opts(&from, &to, options).await
        })
        .await
    }
}

/// A multipart upload into a staging directory: each part and the
/// completion are fenced like a put.
#[derive(Debug)]
struct FencedUpload {
    /// None only while a completion runs (or after one was cut short).
    upload: Option<Box<dyn MultipartUpload>>,
    location: Path,
    write_id: String,
    writes: Arc<Writes>,
}

impl FencedUpload {
    fn taken(&self) -> object_store::Error {
        object_store::Error::Generic {
            store: "warehouse",
            source: format!("the upload of {} was interrupted", self.location).into(),
        }
    }
}

#[async_trait]
impl MultipartUpload for FencedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let Some(upload) = self.upload.as_mut() else {
            let e = self.taken();
            return Box::pin(async move { Err(e) });
        };
        match self.writes.enter(&self.write_id) {
            Ok(share) => Box::pin(guarded(Some(share), upload.put_part(data))),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let share = Some(self.writes.enter(&self.write_id)?);
        let mut upload = self.upload.take().ok_or_else(|| self.taken())?;
        let (upload, done) = guarded(share, async move {
            let done = upload.complete().await;
            Ok((upload, done))
        })
        .await?;
        self.upload = Some(upload);
        done
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        match self.upload.as_mut() {
            Some(upload) => upload.abort().await,
            None => Err(self.taken()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    use object_store::ObjectStoreExt;
    use std::time::{Duration, Instant};

    fn fenced(inner: Arc<dyn ObjectStore>) -> (Fenced, Arc<Writes>) {
        let writes = Arc::new(Writes::default());
        let projects = Path::from("wh/projects");
        (Fenced::new(inner, projects, Arc::clone(&writes)), writes)
    }

    fn store() -> (Fenced, Arc<Writes>) {
        fenced(Arc::new(InMemory::new()))
    }

    #[tokio::test]
    async fn staged_writes_are_accepted_only_while_their_write_is_open() {
        let (store, writes) = store();
        let staged = Path::from("wh/projects/p/t/_staging/w1/a.parquet");
        let err = store.put(&staged, "x".into()).await.unwrap_err();
        assert!(err.to_string().contains("write w1 has ended"), "{err}");

        writes.open("w1");
        store.put(&staged, "x".into()).await.unwrap();
        let mut upload = store
            .put_multipart(&Path::from("wh/projects/p/t/_staging/w1/b.parquet"))
            .await
            .unwrap();
        upload.put_part("part".into()).await.unwrap();
        let promoted = Path::from("wh/projects/p/t/w1-0.parquet");
        store.rename(&staged, &promoted).await.unwrap();

        writes.close("w1").await;
        assert!(upload.put_part("late".into()).await.is_err());
        assert!(upload.complete().await.is_err());
        assert!(store.put(&staged, "late".into()).await.is_err());
        assert!(store.copy(&promoted, &staged).await.is_err());
        // Outside staging directories nothing is fenced.
        store.put(&promoted, "y".into()).await.unwrap();
        let elsewhere = Path::from("data/_staging/w1/a.parquet");
        store.put(&elsewhere, "z".into()).await.unwrap();
        assert_eq!(
            store.get(&promoted).await.unwrap().bytes().await.unwrap(),
            "y"
        );
    }

    #[tokio::test]
    async fn a_close_waits_for_the_writes_in_flight_even_when_their_callers_are_gone() {
        // Every put takes a while, like a large file written by a blocking
        // call that outlives its caller.
        let slow = ThrottledStore::new(
            InMemory::new(),
            ThrottleConfig {
                wait_put_per_call: Duration::from_millis(300),
                ..ThrottleConfig::default()
            },
        );
        let (store, writes) = fenced(Arc::new(slow));
        let store = Arc::new(store);
        writes.open("w");
        let staged = Path::from("wh/projects/p/t/_staging/w/a.parquet");
        let put = {
            let (store, staged) = (Arc::clone(&store), staged.clone());
            tokio::spawn(async move { store.put(&staged, "x".into()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        put.abort();
        let started = Instant::now();
        writes.close("w").await;
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "close waited"
        );
        // What was in flight has landed, so a cleanup now sees it.
        assert!(store.head(&staged).await.is_ok());
        assert!(store.put(&staged, "y".into()).await.is_err());
    }
}
