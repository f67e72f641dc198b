//! Whole SQL statements through the parser every query takes
//! (`sql_guard::parse_statement`: checked tokens, bounded dialect): it
//! never panics, never overflows the stack and never runs long, whatever
//! the text (run with `-timeout=10`, as `scripts/fuzz` does).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = veil_engine::sql_guard::parse_statement(text, 50);
    let _ = veil_engine::sql_guard::parse_expr(text, 50);
});
