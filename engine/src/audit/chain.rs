//! The audit hash chain: each record's MAC is HMAC-SHA256(audit key,
//! previous MAC || length-prefixed fields), so an edited, removed or
//! reordered record breaks every MAC from it on.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::store::{AuditAnchor, AuditEntry, AuditRecord};

type HmacSha256 = Hmac<Sha256>;

/// The MAC of one record, chained to the previous record's MAC.
pub fn mac(key: &[u8; 32], prev: &[u8], at: &str, e: &AuditEntry) -> Vec<u8> {
    // HMAC accepts keys of any length; a 32-byte key cannot fail.
    let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(prev);
    let mut field = |f: &str| {
        mac.update(&(f.len() as u64).to_be_bytes());
        mac.update(f.as_bytes());
    };
    for f in [
        at,
        &e.actor,
        e.impersonated.as_deref().unwrap_or("\u{0}"),
        &e.action,
        &e.object,
        &e.detail,
        &e.outcome,
    ] {
        field(f);
    }
    // Added later: present only when set, so older records keep their MACs.
    if let Some(p) = &e.project {
        field(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Checks records one by one, in id order, against the chain.
#[derive(Debug)]
pub struct Verifier<'k> {
    key: &'k [u8; 32],
    prev: Vec<u8>,
    next_id: i64,
    /// Records seen.
    pub records: i64,
    /// The first record found edited, missing or out of place.
    pub first_broken: Option<i64>,
}

impl<'k> Verifier<'k> {
    /// A verifier continuing the chain after `anchor`.
    pub fn after(key: &'k [u8; 32], anchor: &AuditAnchor) -> Self {
        Self {
            key,
            prev: anchor.mac.clone(),
            next_id: anchor.id + 1,
            records: 0,
            first_broken: None,
        }
    }

    /// Checks the next record.
    pub fn check(&mut self, r: &AuditRecord) {
        self.records += 1;
        if self.first_broken.is_none() {
            if r.id != self.next_id {
                // A gap: the record expected here was removed (or moved).
                self.first_broken = Some(self.next_id.min(r.id));
            } else if !bool::from(mac(self.key, &self.prev, &r.at, &r.entry).ct_eq(&r.mac)) {
                self.first_broken = Some(r.id);
            }
        }
        self.prev = r.mac.clone();
        self.next_id = r.id + 1;
    }

    /// Notes that the records due next cannot be read (a damaged
    /// archive): the chain is broken at the first of them, unless before.
    pub fn unreadable(&mut self) {
        self.first_broken.get_or_insert(self.next_id);
    }

    /// Checks that the chain ends where the store says its head is: a
    /// removed tail shows as the first missing id.
    pub fn finish(&mut self, head: &AuditAnchor) {
        if self.first_broken.is_some() {
            return;
        }
        let last = self.next_id - 1;
        self.first_broken = match head.id.cmp(&last) {
            std::cmp::Ordering::Greater => Some(self.next_id),
            std::cmp::Ordering::Less => Some(head.id + 1),
            std::cmp::Ordering::Equal => (head.mac != self.prev).then_some(last),
        };
    }

    /// Where the checked chain ends.
    pub fn end(&self) -> AuditAnchor {
        AuditAnchor {
            id: self.next_id - 1,
            mac: self.prev.clone(),
        }
    }
}
