//! [`Warehouse`]: the object store holding project workspaces,
//! `<warehouse>/projects/<project-id>/<table>/`.
//!
//! A write lands under `<table>/_staging/<write-id>/`, is renamed to
//! `<table>/<write-id>-<n>.parquet` (still unlisted, so invisible), and
//! becomes part of a table version only when the catalog transaction that
//! lists it commits. Anything under `projects/` that no catalog entry lists
//! is an orphan of a failed or crashed write; [`Warehouse::sweep`] removes
//! them at start-up.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use url::Url;

use super::fence::{Fenced, Writes, STAGING};
use super::WorkspaceFile;
use crate::error::{Result, VeilError};
use crate::model::{CatalogSnapshot, SourceKind};

/// The warehouse root and its object store.
#[derive(Debug, Clone)]
pub struct Warehouse {
    root: Url,
    prefix: Path,
    /// The store, with staged writes fenced (`fence.rs`).
    store: Arc<dyn ObjectStore>,
    writes: Arc<Writes>,
}

/// The object store of `url` and the path in it, S3 settings from the
/// `AWS_*` environment variables (also how executors open the warehouse,
/// `distributed/stores.rs`).
pub(crate) fn open_url(url: &Url) -> object_store::Result<(Box<dyn ObjectStore>, Path)> {
    let options = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
    object_store::parse_url_opts(url, options)
}

fn storage_error(what: &str, e: impl std::fmt::Display) -> VeilError {
    VeilError::Internal(format!("workspace storage: {what}: {e}"))
}

impl Warehouse {
    /// Opens the warehouse at `location` (an object_store URL such as
    /// `s3://bucket/prefix`, or a local directory, created if missing) and
    /// registers its store with `runtime` so that scans and writes reach it.
    /// S3 settings come from the `AWS_*` environment variables
    /// (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_ALLOW_HTTP`, ...).
    pub fn open(location: &str, runtime: &RuntimeEnv) -> Result<Self> {
        let mut root = match Url::parse(location) {
            Ok(u) if u.scheme().len() > 1 => u,
            _ => {
                let dir = std::path::Path::new(location);
                std::fs::create_dir_all(dir)
                    .map_err(|e| storage_error(&format!("cannot create {location}"), e))?;
                let abs = std::fs::canonicalize(dir)
                    .map_err(|e| storage_error(&format!("cannot resolve {location}"), e))?;
                Url::from_directory_path(&abs).map_err(|_| {
                    VeilError::InvalidArgument(format!("warehouse path {location} is not valid"))
                })?
            }
        };
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        let (store, prefix) = open_url(&root).map_err(|e| {
            VeilError::InvalidArgument(format!("warehouse {location} cannot be opened: {e}"))
        })?;
        let writes = Arc::new(Writes::default());
        let projects = prefix.clone().join("projects");
        let store: Arc<dyn ObjectStore> =
            Arc::new(Fenced::new(Arc::from(store), projects, Arc::clone(&writes)));
        let base = ObjectStoreUrl::parse(&root[..url::Position::BeforePath])?;
        runtime.register_object_store(base.as_ref(), Arc::clone(&store));
        Ok(Self {
            root,
            prefix,
            store,
            writes,
        })
    }

    /// The warehouse root URL.
    pub fn root(&self) -> &Url {
        &self.root
    }

    fn child(&self, parts: &[&str]) -> Path {
        parts
            .iter()
            .fold(self.prefix.clone(), |p, part| p.join(*part))
    }

    /// `projects/<project-id>/<table>/`.
    pub fn table_dir(&self, project_id: &str, table: &str) -> Path {
        self.child(&["projects", project_id, table])
    }

    /// Where one write stages its files; they are accepted there until
    /// [`Warehouse::close_write`].
    pub fn open_write(&self, project_id: &str, table: &str, write_id: &str) -> Path {
        self.writes.open(write_id);
        self.child(&["projects", project_id, table, STAGING, write_id])
    }

    /// Refuses any further file for a write at once; the returned future
    /// waits for those in flight to land, after which what is staged is all
    /// there will be.
    pub fn close_write(&self, write_id: &str) -> impl std::future::Future<Output = ()> + 'static {
        self.writes.close(write_id)
    }

    /// The URL DataFusion reads or writes an object (or directory) at.
    pub fn url_of(&self, path: &Path) -> String {
        format!("{}{}", &self.root[..url::Position::BeforePath], {
            let p = path.as_ref();
            if p.is_empty() {
                "/".to_string()
            } else {
                format!("/{p}")
            }
        })
    }

    /// Objects under a directory.
    pub async fn list(&self, dir: &Path) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(dir))
            .try_collect()
            .await
            .map_err(|e| storage_error(&format!("listing {dir}"), e))
    }

    /// Moves a write's staged files to their final (still unlisted) names.
    pub async fn promote(
        &self,
        staged: &[ObjectMeta],
        project_id: &str,
        table: &str,
        write_id: &str,
    ) -> Result<Vec<WorkspaceFile>> {
        let dir = self.table_dir(project_id, table);
        let mut files = Vec::with_capacity(staged.len());
        for (n, meta) in staged.iter().enumerate() {
            let to = dir.clone().join(format!("{write_id}-{n}.parquet").as_str());
            self.store
                .rename(&meta.location, &to)
                .await
                .map_err(|e| storage_error(&format!("renaming {}", meta.location), e))?;
            files.push(WorkspaceFile {
                path: to.to_string(),
                size: meta.size,
            });
        }
        Ok(files)
    }

    /// Deletes objects; a missing one is not an error.
    pub async fn delete(&self, paths: Vec<Path>) -> Result<()> {
        for p in paths {
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_error(&format!("deleting {p}"), e)),
            }
        }
        Ok(())
    }

    /// Deletes everything under a directory; in a local warehouse also the
    /// directory itself, and its parent staging directory once empty.
    pub async fn delete_dir(&self, dir: &Path) -> Result<()> {
        let metas = self.list(dir).await?;
        self.delete(metas.into_iter().map(|m| m.location).collect())
            .await?;
        if self.root.scheme() == "file" {
            if let Ok(Ok(local)) = Url::parse(&self.url_of(dir)).map(|u| u.to_file_path()) {
                // Fails (and keeps them) unless empty.
                let _ = std::fs::remove_dir(&local);
                if let Some(parent) = local.parent().filter(|p| p.ends_with(STAGING)) {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
        Ok(())
    }

    /// Every object a catalog entry lists: workspace table files and the
    /// files derived sources pin.
    pub fn referenced(&self, snapshot: &CatalogSnapshot) -> HashSet<String> {
        let mut out: HashSet<String> = snapshot
            .workspaces
            .values()
            .flat_map(|tables| tables.values())
            .flat_map(|t| t.files.iter().map(|f| f.path.clone()))
            .collect();
        for s in snapshot.sources.values() {
            if let SourceKind::Derived(l) = &s.kind {
                out.extend(l.files.iter().filter_map(|u| self.path_of(u)));
            }
        }
        out
    }

    /// Whether a location (URL or local path) lies inside the warehouse,
    /// where only the workspace machinery may read.
    pub fn contains(&self, location: &str) -> bool {
        let url = match Url::parse(location) {
            Ok(u) if u.scheme().len() > 1 => Some(u),
            _ => {
                let path = std::path::Path::new(location);
                let abs = std::fs::canonicalize(path)
                    .or_else(|_| std::path::absolute(path))
                    .unwrap_or_else(|_| path.to_path_buf());
                Url::from_file_path(abs).ok()
            }
        };
        let root = self.root.as_str();
        match url {
            Some(u) => {
                let u = u.as_str();
                u.starts_with(root) || root.strip_suffix('/') == Some(u)
            }
            None => false,
        }
    }

    /// The object path of a URL inside this warehouse's store.
    pub fn path_of(&self, url: &str) -> Option<String> {
        url.strip_prefix(&self.root[..url::Position::BeforePath])
            .map(|p| p.trim_start_matches('/').to_string())
    }

    /// Deletes the given files unless a catalog entry still lists them.
    pub async fn release(&self, snapshot: &CatalogSnapshot, files: &[String]) -> Result<()> {
        let keep = self.referenced(snapshot);
        let unlisted: Vec<Path> = files
            .iter()
            .filter(|f| !keep.contains(*f))
            .map(|f| Path::from(f.as_str()))
            .collect();
        self.delete(unlisted).await
    }

    /// Removes every object under `projects/` that no catalog entry lists
    /// (staged or promoted files of writes that never committed). Returns how
    /// many were removed. Run at start-up, before writes are accepted.
    ///
    /// With `min_age`, only what is older than that goes: servers sharing
    /// the catalog and the warehouse may be writing (or committing) files
    /// this server's snapshot does not list yet.
    pub async fn sweep(
        &self,
        snapshot: &CatalogSnapshot,
        min_age: Option<std::time::Duration>,
    ) -> Result<usize> {
        let cutoff = min_age.map(|age| std::time::SystemTime::now() - age);
        let old_enough = |t: std::time::SystemTime| cutoff.is_none_or(|c| t < c);
        let keep = self.referenced(snapshot);
        let orphans: Vec<Path> = self
            .list(&self.child(&["projects"]))
            .await?
            .into_iter()
            .filter(|m| !keep.contains(m.location.as_ref()))
            .filter(|m| old_enough(m.last_modified.into()))
            .map(|m| m.location)
            .collect();
        let mut n = orphans.len();
        self.delete(orphans).await?;
        // A local store does not list the temporary files of uploads that
        // never completed (`name#1`); remove staging directories outright,
        // then the directories left empty.
        if let Ok(root) = self.root.to_file_path() {
            n += tidy_local(&root.join("projects"), true, &old_enough);
        }
        Ok(n)
    }
}

/// Removes `_staging` directories (counting their files) and empty
/// directories under `dir` whose last change `old_enough` accepts; returns
/// the files removed.
fn tidy_local(
    dir: &std::path::Path,
    top: bool,
    old_enough: &dyn Fn(std::time::SystemTime) -> bool,
) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let changed = |p: &std::path::Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(old_enough)
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        if p.file_name().is_some_and(|n| n == STAGING) {
            if changed(&p) {
                removed += count_files(&p);
                let _ = std::fs::remove_dir_all(&p);
            }
        } else {
            removed += tidy_local(&p, false, old_enough);
        }
    }
    if !top && changed(dir) {
        // Fails (and keeps it) unless empty.
        let _ = std::fs::remove_dir(dir);
    }
    removed
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p)
            } else {
                1
            }
        })
        .sum()
}
