//! Flight session options (SetSessionOptions / GetSessionOptions /
//! CloseSession), the way ADBC's `adbc.connection.catalog` and JDBC's
//! `catalog=` reach the server.
//!
//! arrow-flight 59 does not generate these messages, so they are declared
//! here with prost, field for field as in Flight.proto.

use std::collections::HashMap;

use prost::Message;
use tonic::Status;
use veil_engine::Session;

/// `SessionOptionValue`.
#[derive(Clone, PartialEq, Message)]
pub struct SessionOptionValue {
    /// The value.
    #[prost(oneof = "OptionValue", tags = "1, 2, 3, 4, 5")]
    pub option_value: Option<OptionValue>,
}

/// `SessionOptionValue.StringListValue`.
#[derive(Clone, PartialEq, Message)]
pub struct StringListValue {
    /// Values.
    #[prost(string, repeated, tag = "1")]
    pub values: Vec<String>,
}

/// The `option_value` oneof (variant names follow Flight.proto).
#[allow(clippy::enum_variant_names)]
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OptionValue {
    /// A string.
    #[prost(string, tag = "1")]
    StringValue(String),
    /// A boolean.
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    /// An integer.
    #[prost(sfixed64, tag = "3")]
    Int64Value(i64),
    /// A double.
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    /// A string list.
    #[prost(message, tag = "5")]
    StringListValue(StringListValue),
}

/// `SetSessionOptionsRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct SetSessionOptionsRequest {
    /// Options to set.
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// `SetSessionOptionsResult.Error`.
#[derive(Clone, PartialEq, Message)]
pub struct SetSessionOptionError {
    /// 1 INVALID_NAME, 2 INVALID_VALUE, 3 ERROR.
    #[prost(int32, tag = "1")]
    pub value: i32,
}

/// `SetSessionOptionsResult`.
#[derive(Clone, PartialEq, Message)]
pub struct SetSessionOptionsResult {
    /// Per-option errors.
    #[prost(map = "string, message", tag = "1")]
    pub errors: HashMap<String, SetSessionOptionError>,
}

/// `GetSessionOptionsResult`.
#[derive(Clone, PartialEq, Message)]
pub struct GetSessionOptionsResult {
    /// Current options.
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// `CloseSessionResult`.
#[derive(Clone, PartialEq, Message)]
pub struct CloseSessionResult {
    /// 1 CLOSED.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

const INVALID_NAME: i32 = 1;
const INVALID_VALUE: i32 = 2;

fn text(v: &SessionOptionValue) -> Option<&str> {
    match &v.option_value {
        Some(OptionValue::StringValue(s)) => Some(s),
        None => Some(""),
        _ => None,
    }
}

/// Applies options to a session; unknown names and bad values are reported
/// per option, as the protocol asks.
pub fn set(session: &mut Session, req: SetSessionOptionsRequest) -> SetSessionOptionsResult {
    let mut errors = HashMap::new();
    for (name, value) in req.session_options {
        let code = match (name.as_str(), text(&value)) {
            // Projects are catalogs: `veil` or empty leaves the project.
            ("catalog", Some(c)) => session.use_project(Some(c)).err().map(|e| {
                tracing::info!("catalog option refused: {e}");
                INVALID_VALUE
            }),
            ("catalog", None) => Some(INVALID_VALUE),
            ("veil.impersonate", Some(user)) => session
                .impersonate(Some(user).filter(|u| !u.is_empty()))
                .err()
                .map(|_| INVALID_VALUE),
            ("veil.impersonate", None) => Some(INVALID_VALUE),
            _ => Some(INVALID_NAME),
        };
        if let Some(value) = code {
            errors.insert(name, SetSessionOptionError { value });
        }
    }
    SetSessionOptionsResult { errors }
}

/// The session's current options.
pub fn get(session: &Session) -> GetSessionOptionsResult {
    let string = |s: &str| SessionOptionValue {
        option_value: Some(OptionValue::StringValue(s.to_string())),
    };
    let mut session_options =
        HashMap::from([("catalog".to_string(), string(session.catalog_name()))]);
    if let Some(u) = session.impersonated() {
        session_options.insert("veil.impersonate".into(), string(u));
    }
    GetSessionOptionsResult { session_options }
}

/// Decodes a request body.
pub fn decode<M: Message + Default>(body: &[u8]) -> Result<M, Status> {
    M::decode(body).map_err(|e| Status::invalid_argument(format!("malformed session options: {e}")))
}

/// The CLOSED status.
pub fn closed() -> CloseSessionResult {
    CloseSessionResult { status: 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let req = SetSessionOptionsRequest {
            session_options: HashMap::from([(
                "catalog".to_string(),
                SessionOptionValue {
                    option_value: Some(OptionValue::StringValue("veil".into())),
                },
            )]),
        };
        let back: SetSessionOptionsRequest = decode(&req.encode_to_vec()).unwrap();
        assert_eq!(back, req);
        assert!(decode::<SetSessionOptionsRequest>(&[0xff, 0xff, 0xff]).is_err());
    }
}
