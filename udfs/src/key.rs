//! Key handles and key material held by keyed masks.

use std::fmt;

/// The public identity of a key: what plans, EXPLAIN and audit records show.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHandle {
    /// Stable key id, e.g. `col:hr.employees.ssn` or `project:7`.
    pub id: String,
    /// Key version; rotation makes a new version current.
    pub version: u32,
}

impl fmt::Display for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#v{}", self.id, self.version)
    }
}

impl fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A key handle with its 32 secret bytes. `Debug` prints the handle only.
#[derive(Clone)]
pub struct MaskKey {
    handle: KeyHandle,
    bytes: [u8; 32],
}

impl MaskKey {
    /// Pairs a handle with its secret bytes.
    pub fn new(handle: KeyHandle, bytes: [u8; 32]) -> Self {
        Self { handle, bytes }
    }

    /// The public handle.
    pub fn handle(&self) -> &KeyHandle {
        &self.handle
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MaskKey({})", self.handle)
    }
}

impl PartialEq for MaskKey {
    fn eq(&self, other: &Self) -> bool {
        self.handle == other.handle
    }
}
impl Eq for MaskKey {}
impl std::hash::Hash for MaskKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.handle.hash(state)
    }
}
