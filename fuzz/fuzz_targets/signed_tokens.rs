//! Bearer tokens, tickets and prepared-statement handles: decoding any
//! string never panics and never verifies without the key; a body signed
//! with the key (so the fuzzer reaches the JSON decoding behind the MAC)
//! decodes or fails cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_flight_server::service::Handle;
use veil_flight_server::signed::Signer;

fuzz_target!(|data: &[u8]| {
    let signer = Signer::new([7; 32]);
    let text = String::from_utf8_lossy(data);
    for kind in ["token", "ticket", "handle"] {
        assert!(
            signer.verify::<Handle>(kind, &text).is_err(),
            "a {kind} verified without being signed"
        );
    }
    // Reach the body decoding behind the MAC: sign the fuzz text as a JSON
    // string and as raw JSON.
    if let Ok(token) = signer.sign("handle", text.as_ref(), 60) {
        let _ = signer.verify::<Handle>("handle", &token);
        let _ = signer.verify::<String>("handle", &token);
    }
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
        if let Ok(token) = signer.sign("handle", value, 60) {
            let _ = signer.verify::<Handle>("handle", &token);
        }
    }
});
