//! The effective principal policies are evaluated for.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::User;

/// Who a query runs as, for policy evaluation.
///
/// For an ordinary session this is the (impersonated) user; `user` is None
/// only for a synthetic principal (equalized projects).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// User name; None for a synthetic principal.
    pub user: Option<String>,
    /// Groups.
    pub groups: BTreeSet<String>,
    /// Attributes: key -> values.
    pub attributes: BTreeMap<String, BTreeSet<String>>,
    /// Purposes acted under (with their ancestors).
    pub purposes: BTreeSet<String>,
}

impl Principal {
    /// The principal of a user acting outside any project.
    pub fn of_user(u: &User) -> Self {
        Self {
            user: Some(u.name.clone()),
            groups: u.groups.clone(),
            attributes: u.attributes.clone(),
            purposes: BTreeSet::new(),
        }
    }

    /// Whether the principal has attribute `key` with `value`.
    pub fn has_attribute(&self, key: &str, value: &str) -> bool {
        self.attributes
            .get(key)
            .is_some_and(|vs| vs.contains(value))
    }

    /// A short description for errors and audit: the user name or `<equalized>`.
    pub fn describe(&self) -> &str {
        self.user.as_deref().unwrap_or("<equalized principal>")
    }
}
