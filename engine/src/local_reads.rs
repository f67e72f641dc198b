//! Local files read into buffers that are not zeroed first.
//!
//! `object_store`'s `LocalFileSystem` fills each range's buffer with zeros
//! before reading the file into it: 1.5-1.6 % of the CPU of a TPC-H query
//! over local Parquet (`perf` of q6 and q22 at scale 1, 2026-12-07).
//! [`LocalReads`] is that store with ranges read by `Read::read_to_end`,
//! which reads into a vector's spare capacity as it is. Everything else
//! (listing, heads, whole-object gets, writes) is the inner store's.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// The local file system, ranges read without zeroing (module docs).
#[derive(Debug, Default)]
pub struct LocalReads {
    inner: LocalFileSystem,
}

impl std::fmt::Display for LocalReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalReads({})", self.inner)
    }
}

fn io_error(e: std::io::Error, path: &std::path::Path) -> object_store::Error {
    let path = path.display().to_string();
    match e.kind() {
        ErrorKind::NotFound => object_store::Error::NotFound {
            path,
            source: Box::new(e),
        },
        _ => object_store::Error::Generic {
            store: "LocalFileSystem",
            source: format!("cannot read {path}: {e}").into(),
        },
    }
}

/// `ranges` of the file at `path`, each exactly as long as asked.
fn read_ranges(path: &std::path::Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
    let mut file = File::open(path).map_err(|e| io_error(e, path))?;
    ranges
        .iter()
        .map(|r| {
            let Some(want) = r.end.checked_sub(r.start) else {
                return Err(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: format!("range {r:?} of {} ends before it starts", path.display())
                        .into(),
                });
            };
            file.seek(SeekFrom::Start(r.start))
                .map_err(|e| io_error(e, path))?;
            let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(usize::MAX));
            (&mut file)
                .take(want)
                .read_to_end(&mut buf)
                .map_err(|e| io_error(e, path))?;
            if buf.len() as u64 != want {
                return Err(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: format!(
                        "range {r:?} is past the end of {} ({} bytes read)",
                        path.display(),
                        buf.len()
                    )
                    .into(),
                });
            }
            Ok(Bytes::from(buf))
        })
        .collect()
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for LocalReads {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
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
        let path = self.inner.path_to_filesystem(location)?;
        let ranges = ranges.to_vec();
        tokio::task::spawn_blocking(move || read_ranges(&path, &ranges))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            })?
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
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    /// Ranges come back as the local file system gives them, and a range
    /// past the end, a reversed range and a missing file are errors that
    /// name the file.
    #[tokio::test]
    #[allow(clippy::single_range_in_vec_init, clippy::reversed_empty_ranges)]
    async fn ranges_read_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = dir.path().join("data.bin");
        std::fs::write(&file, &bytes).unwrap();
        let location = Path::from_filesystem_path(&file).unwrap();
        let store = LocalReads::default();
        let plain = LocalFileSystem::new();
        let ranges = [0..10, 5..70_000, 99_990..100_000, 50..50, 0..100_000];
        let got = store.get_ranges(&location, &ranges).await.unwrap();
        let expected = plain.get_ranges(&location, &ranges).await.unwrap();
        assert_eq!(got, expected);
        for (r, b) in ranges.iter().zip(&got) {
            assert_eq!(&b[..], &bytes[r.start as usize..r.end as usize]);
        }
        // The rest is the inner store's.
        assert_eq!(store.head(&location).await.unwrap().size, 100_000);
        assert_eq!(
            store.get_range(&location, 3..6).await.unwrap(),
            &bytes[3..6]
        );

        let past = store.get_ranges(&location, &[99_000..100_001]).await;
        let past = past.unwrap_err().to_string();
        assert!(
            past.contains("past the end") && past.contains("data.bin"),
            "{past}"
        );
        let reversed = store.get_ranges(&location, &[10..5]).await.unwrap_err();
        assert!(
            reversed.to_string().contains("ends before it starts"),
            "{reversed}"
        );
        let missing = Path::from_filesystem_path(dir.path())
            .unwrap()
            .join("none.bin");
        let missing = store.get_ranges(&missing, &[0..1]).await.unwrap_err();
        assert!(
            matches!(missing, object_store::Error::NotFound { .. }),
            "{missing}"
        );
    }
}
