//! The object stores of an executor: local files, and any `s3://` bucket a
//! plan reads (a warehouse on S3, its workspace tables and derived
//! sources), opened on first use with the `AWS_*` environment variables,
//! as the front end opens its warehouse (`workspace/storage.rs`). A plan
//! names its stores by URL only; nothing about them travels in it.

use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::SessionConfig;
use object_store::ObjectStore;
use url::Url;

/// [`DefaultObjectStoreRegistry`], opening a store it does not hold from
/// its URL and the environment.
#[derive(Debug, Default)]
pub(crate) struct EnvStores {
    stores: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for EnvStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.stores.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.stores.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.stores.get_store(url) {
            return Ok(store);
        }
        if url.scheme() != "s3" {
            return Err(DataFusionError::Execution(format!(
                "this executor has no object store for {}://{}",
                url.scheme(),
                url.host_str().unwrap_or_default()
            )));
        }
        let (store, _) = crate::workspace::storage::open_url(url).map_err(|e| {
            DataFusionError::Execution(format!("cannot open the object store of {url}: {e}"))
        })?;
        let store: Arc<dyn ObjectStore> = Arc::from(store);
        // Two tasks opening it at once keep one each; both work.
        self.stores.register_store(url, Arc::clone(&store));
        Ok(store)
    }
}

/// A runtime whose stores are [`EnvStores`]; spill files in `spill` if set.
pub(crate) fn runtime(spill: Option<&str>) -> Result<Arc<RuntimeEnv>> {
    let mut runtime =
        RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(EnvStores::default()));
    if let Some(dir) = spill {
        runtime = runtime.with_temp_file_path(dir);
    }
    Ok(Arc::new(runtime.build()?))
}

/// Ballista's scheduler session with [`EnvStores`]: decoding a plan looks
/// up the store of each file it scans (nothing is read there).
pub(crate) fn scheduler_session(config: SessionConfig) -> Result<SessionState> {
    let state = ballista_core::utils::default_session_builder(config)?;
    Ok(SessionStateBuilder::new_from_existing(state)
        .with_runtime_env(runtime(None)?)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_files_and_s3_buckets_open_other_schemes_do_not() {
        let stores = EnvStores::default();
        assert!(stores.get_store(&Url::parse("file:///").unwrap()).is_ok());
        let bucket = Url::parse("s3://some-bucket/").unwrap();
        let first = stores.get_store(&bucket).unwrap();
        // Opened once, then reused.
        assert!(Arc::ptr_eq(&first, &stores.get_store(&bucket).unwrap()));
        let e = stores
            .get_store(&Url::parse("gs://other/").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no object store for gs://other"), "{e}");
    }
}
