//! Flight SQL command decoding as the server sees it: any bytes in a
//! FlightDescriptor command, a ticket or an action body decode into a
//! command (or a clean error), and Veil's own decoders (session options,
//! signed tickets inside TicketStatementQuery) never panic.
#![no_main]

use arrow_flight::sql::{Any, Command, TicketStatementQuery};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use veil_flight_server::service::session_options;
use veil_flight_server::signed::Signer;

fuzz_target!(|data: &[u8]| {
    if let Ok(any) = Any::decode(data) {
        let _ = Command::try_from(any);
    }
    let _ = session_options::decode::<session_options::SetSessionOptionsRequest>(data);
    if let Ok(ticket) = TicketStatementQuery::decode(data) {
        let signer = Signer::new([7; 32]);
        let text = String::from_utf8_lossy(&ticket.statement_handle);
        let _ = signer.verify::<veil_flight_server::service::Handle>("ticket", &text);
    }
});
