//! Reading requests: bodies under a size limit, JSON with the path of whatever
//! failed to parse, query strings (repeated or comma-separated lists), timestamps.

use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::{HttpRequest, http::header};
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ValidationItem};
use crate::store::{Order, PageReq};

/// Reads the whole body, refusing (413) anything over `limit` bytes, before or while reading.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a JSON body. Malformed JSON is a 400; JSON of the wrong shape a 422
/// naming the field (`["body", "eventTypes", "[0]"]`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8], max_depth: usize) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            &["body"],
            "a JSON request body is required",
        ));
    }
    if nesting_exceeds(body, max_depth) {
        return Err(ApiError::BadRequest(format!(
            "JSON body nested deeper than {max_depth} levels"
        )));
    }
    // Most bodies are parsed once; one that does not parse is looked at
    // again below, to say why.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    // Syntax first: a body that is not JSON at all is a 400 even when a value
    // of the wrong type comes before the syntax error.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err(ApiError::BadRequest(format!("malformed JSON body: {e}")));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::BadRequest(format!("malformed JSON body: {inner}"));
        }
        let mut loc = vec!["body".to_owned()];
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => loc.push(format!("[{index}]")),
                serde_path_to_error::Segment::Map { key } => loc.push(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => loc.push(variant.clone()),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        // serde reports a missing field at its parent; name the field itself.
        let msg = inner.to_string();
        if let Some(field) = msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            loc.push(field.to_owned());
        }
        ApiError::Validation(vec![ValidationItem {
            loc,
            msg: strip_position(&msg),
            kind: "type_error".into(),
        }])
    })
}

/// Does the JSON text nest arrays and objects deeper than `max`? A byte scan,
/// before any parsing, so a hostile body costs one pass and no recursion.
/// (serde_json alone stops at a fixed 128 levels; this makes the bound ours.)
fn nesting_exceeds(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

pub use crate::domain::{format_time, parse_time};

/// The query string as key/value pairs, in order.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn from_request(req: &HttpRequest) -> Result<Self, ApiError> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
            .map(Query)
            .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every value of a list parameter, whether repeated (`a=1&a=2`) or comma-joined (`a=1,2`).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key || k == &format!("{key}[]"))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(other) => Err(ApiError::invalid(
                &["query", key],
                format!("`{other}` is not a boolean"),
            )),
        }
    }

    pub fn time(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| {
                parse_time(v).ok_or_else(|| {
                    ApiError::invalid(
                        &["query", key],
                        format!("`{v}` is not an RFC 3339 timestamp"),
                    )
                })
            })
            .transpose()
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::invalid(&["query", key], format!("`{v}` is not an integer"))
                })
            })
            .transpose()
    }

    /// `limit` (default 50, at most 250), `iterator` and `order` (descending unless asked).
    pub fn page(&self) -> Result<PageReq, ApiError> {
        let limit = match self.int("limit")? {
            None => DEFAULT_LIMIT,
            Some(n) if !(1..=MAX_LIMIT as i64).contains(&n) => {
                return Err(ApiError::invalid(
                    &["query", "limit"],
                    format!("limit must be between 1 and {MAX_LIMIT}"),
                ));
            }
            Some(n) => n as usize,
        };
        let order = match self.get("order") {
            None | Some("descending") => Order::Descending,
            Some("ascending") => Order::Ascending,
            Some(other) => {
                return Err(ApiError::invalid(
                    &["query", "order"],
                    format!("`{other}` is not one of ascending, descending"),
                ));
            }
        };
        Ok(PageReq {
            cursor: self.get("iterator").map(str::to_owned),
            order,
            limit,
            ..PageReq::first(limit)
        })
    }
}

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 250;

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Sample {
        event_types: Vec<String>,
        name: String,
    }

    #[test]
    fn json_errors_name_the_field() {
        match parse_json::<Sample>(br#"{"eventTypes": ["a", 3], "name": "x"}"#, 64) {
            Err(ApiError::Validation(items)) => {
                assert_eq!(items[0].loc, ["body", "eventTypes", "[1]"])
            }
            other => panic!("{other:?}"),
        }
        match parse_json::<Sample>(br#"{"eventTypes": []}"#, 64) {
            Err(ApiError::Validation(items)) => assert_eq!(items[0].loc, ["body", "name"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_json::<Sample>(b"{nope", 64),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<Sample>(b"", 64),
            Err(ApiError::Validation(_))
        ));
        // A whole value followed by more than whitespace is malformed.
        let whole = br#"{"eventTypes": [], "name": "x"}"#;
        assert!(parse_json::<Sample>(&[&whole[..], b" \n"].concat(), 64).is_ok());
        for tail in [&b"}"[..], b" {}", b"x"] {
            assert!(matches!(
                parse_json::<Sample>(&[&whole[..], tail].concat(), 64),
                Err(ApiError::BadRequest(_))
            ));
        }
    }

    #[test]
    fn nesting_is_bounded_outside_strings_only() {
        assert!(!nesting_exceeds(br#"{"a":[[1]]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[[[1]]]}"#, 3));
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[\"[[[["}"#, 1));
        let deep = "[".repeat(100_000);
        assert!(matches!(
            parse_json::<serde_json::Value>(deep.as_bytes(), 64),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time("1970-01-01T00:00:01+00:00"), Some(1000));
        assert_eq!(parse_time("1970-01-01T01:00:01+01:00"), Some(1000));
        assert_eq!(parse_time("1970-01-01T00:00:01.5"), Some(1500));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(format_time(1500), "1970-01-01T00:00:01.500Z");
    }
}

#[cfg(test)]
mod raw_tests {
    use super::parse_json;
    use crate::api::model::MessageIn;

    #[test]
    fn payload_bytes_survive_parsing() {
        let body = br#"{"eventType":"a.b","payload": {"z": 1,  "a" : [1, 2]} }"#;
        let m: MessageIn = parse_json(body, 64).unwrap();
        assert_eq!(m.payload.get(), r#"{"z": 1,  "a" : [1, 2]}"#);
    }
}
