//! Per-principal catalogs kept between statements.
//!
//! What a statement's catalog holds (which sources are visible, their
//! masked schemas, the rewrite of each source) depends only on the policy
//! version, the authenticated and impersonated users and the project: every
//! governance change bumps the version, and the principal (groups,
//! attributes, purposes, equalization) is read from the snapshot of that
//! version. So the catalog built for one statement serves the next ones of
//! the same principal until the version changes, instead of evaluating
//! every source's policies, deriving mask keys and opening its table again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::catalog::VeilCatalog;
use crate::error::Result;
use crate::principal::Principal;

/// The most principals kept at once; beyond it the cache starts over.
pub const CAPACITY: usize = 128;

/// Who a catalog was built for, besides the policy version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CatalogKey {
    pub user: String,
    pub impersonated: Option<String>,
    pub project: Option<String>,
}

/// A principal and the catalog it sees, at one policy version.
#[derive(Debug)]
pub(crate) struct PrincipalView {
    pub principal: Principal,
    pub catalog: Arc<VeilCatalog>,
}

#[derive(Debug, Default)]
struct Entries {
    version: u64,
    views: HashMap<CatalogKey, Arc<PrincipalView>>,
}

/// The views of one policy version, by principal.
#[derive(Debug, Default)]
pub(crate) struct CatalogCache {
    entries: Mutex<Entries>,
}

impl CatalogCache {
    /// The view of `key` at `version`: kept, or made by `build` and kept.
    /// A view of another version is never returned; errors are not kept.
    pub fn get_or_build(
        &self,
        version: u64,
        key: CatalogKey,
        build: impl FnOnce() -> Result<PrincipalView>,
    ) -> Result<Arc<PrincipalView>> {
        if let Some(view) = self.get(version, &key) {
            return Ok(view);
        }
        let view = Arc::new(build()?);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.version != version || entries.views.len() >= CAPACITY {
                entries.views.clear();
                entries.version = version;
            }
            entries.views.insert(key, Arc::clone(&view));
        }
        Ok(view)
    }

    fn get(&self, version: u64, key: &CatalogKey) -> Option<Arc<PrincipalView>> {
        let entries = self.entries.lock().ok()?;
        if entries.version != version {
            return None;
        }
        entries.views.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str) -> CatalogKey {
        CatalogKey {
            user: user.into(),
            impersonated: None,
            project: None,
        }
    }

    fn view(user: &str) -> Result<PrincipalView> {
        Ok(PrincipalView {
            principal: Principal {
                user: Some(user.into()),
                ..Default::default()
            },
            catalog: Arc::new(VeilCatalog::default()),
        })
    }

    #[test]
    fn a_view_is_kept_for_its_version_and_principal_only() {
        let cache = CatalogCache::default();
        let first = cache.get_or_build(1, key("bob"), || view("bob")).unwrap();
        let again = cache
            .get_or_build(1, key("bob"), || panic!("built twice"))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let alice = cache
            .get_or_build(1, key("alice"), || view("alice"))
            .unwrap();
        assert_eq!(alice.principal.user.as_deref(), Some("alice"));
        // A new version builds again, and an old version is never served.
        let newer = cache.get_or_build(2, key("bob"), || view("bob")).unwrap();
        assert!(!Arc::ptr_eq(&first, &newer));
        let older = cache.get_or_build(1, key("bob"), || view("bob")).unwrap();
        assert!(!Arc::ptr_eq(&newer, &older));
    }

    #[test]
    fn a_failed_build_is_not_kept() {
        let cache = CatalogCache::default();
        let failed = cache.get_or_build(1, key("bob"), || {
            Err(crate::error::VeilError::Internal("broken".into()))
        });
        assert!(failed.is_err());
        assert!(cache.get_or_build(1, key("bob"), || view("bob")).is_ok());
    }
}
