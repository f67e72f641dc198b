//! Panics of the Parquet decoder on damaged files.
//!
//! parquet 59 asserts, rather than returning an error, on some malformed
//! pages: a dictionary index bit width above 32 trips `BitReader`'s
//! `num_bits <= size_of::<T>() * 8` (apache/arrow-rs#10722, fixed in
//! parquet 60, which DataFusion 55 does not use). Every statement catches
//! its panics (`executor.rs`); this module tells the ones raised inside
//! the parquet crate, so that such a query fails as its table's unreadable
//! data (`catalog::explain_read_error`) rather than as an internal error.
//!
//! A panic's payload does not say where it was raised, and a panic inside
//! a partition DataFusion spawned reaches the statement as a resumed panic
//! or as a `JoinError`'s text. So a process-wide panic hook, chained before
//! the previous one (which still prints it), keeps the messages of the last
//! few panics raised in the parquet crate's sources; a caught panic, or an
//! error's text, carrying one of them is the decoder's. A panic raised
//! elsewhere with the very text of a recent decoder panic (an overflow's
//! generic message) would be taken for the decoder's; the server log has
//! both, with where each was raised.

use std::collections::VecDeque;
use std::sync::{Mutex, Once};

/// How many recent decoder panic messages are kept.
const KEPT: usize = 32;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
static WATCH: Once = Once::new();

/// A panic of the Parquet decoder, as a query error.
#[derive(Debug, thiserror::Error)]
#[error("the Parquet decoder failed on a damaged page: {0}")]
pub(crate) struct DecoderPanic(pub String);

/// Installs the hook that records the parquet crate's panics (once per
/// process; the hook found in place still runs after it).
pub(crate) fn watch() {
    WATCH.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_parquet = info.location().is_some_and(|l| in_parquet(l.file()));
            if let (true, Some(message)) = (in_parquet, info.payload_as_str()) {
                if let Ok(mut recent) = RECENT.lock() {
                    if !recent.iter().any(|m| m == message) {
                        if recent.len() == KEPT {
                            recent.pop_front();
                        }
                        recent.push_back(message.to_string());
                    }
                }
            }
            previous(info);
        }));
    });
}

/// Whether a source file's path is the parquet crate's (a registry
/// `parquet-59.3.2/src/...`, or a checkout's `parquet/src/...`).
fn in_parquet(file: &str) -> bool {
    let mut parts = file.split(['/', '\\']).peekable();
    while let Some(part) = parts.next() {
        let crate_dir = part == "parquet"
            || part
                .strip_prefix("parquet-")
                .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()));
        if crate_dir && parts.peek() == Some(&"src") {
            return true;
        }
    }
    false
}

/// Whether `message`, a caught panic's, was raised in the parquet crate.
pub(crate) fn is_decoder_panic(message: &str) -> bool {
    RECENT
        .lock()
        .is_ok_and(|recent| recent.iter().any(|m| m == message))
}

/// Whether an error's `text` reports a decoder panic (a spawned
/// partition's `JoinError`: "task 7 panicked with message \"...\"").
pub(crate) fn mentions_decoder_panic(text: &str) -> bool {
    text.contains("panicked")
        && RECENT.lock().is_ok_and(|recent| {
            recent
                .iter()
                .any(|m| text.contains(m.as_str()) || text.contains(&format!("{m:?}")))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parquet_crates_sources_are_told_from_others() {
        let registry = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f";
        assert!(in_parquet(&format!(
            "{registry}/parquet-59.3.2/src/util/bit_util.rs"
        )));
        assert!(in_parquet("/src/arrow-rs/parquet/src/encodings/rle.rs"));
        assert!(!in_parquet(&format!(
            "{registry}/datafusion-datasource-parquet-55.2.0/src/opener.rs"
        )));
        assert!(!in_parquet("engine/src/parquet/src.rs"));
        assert!(!in_parquet("engine/src/catalog.rs"));
    }

    #[test]
    fn only_messages_of_recorded_panics_are_the_decoders() {
        watch();
        // Raised here, not in the parquet crate: not recorded.
        let ours = std::panic::catch_unwind(|| panic!("a panic of ours")).unwrap_err();
        let ours = crate::executor::panic_message(ours.as_ref());
        assert!(!is_decoder_panic(ours));
        assert!(!mentions_decoder_panic(&format!(
            "task 7 panicked with message {ours:?}"
        )));
    }
}
