//! Which failures go away by themselves: one function classifies every ClickHouse error, after
//! Vector's ClickHouse sink (which retries server errors except those that say the data or the
//! schema is wrong).
//!
//! Both kinds are retried: exactly once requires a partition to wait for its batch, never to
//! skip it. What differs is what the operator is told. A transient failure (connection refused,
//! timeout, 5xx, a server busy merging or out of memory) is retried with a short backoff and
//! only reported after a few attempts; a permanent one (a table or column missing, a type that
//! does not match) will fail the same way until someone acts, so it is retried slowly and
//! reported at once, with what to do.

use std::fmt;

/// How a failure is retried and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    Transient,
    Permanent(Permanent),
}

/// A failure that needs the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permanent {
    /// ClickHouse's error code, when the server sent one.
    pub code: Option<u32>,
    /// ClickHouse's name for it, or ours for a client-side one.
    pub name: &'static str,
    pub remedy: Remedy,
}

/// What the operator should do about a permanent failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// The database's schema is not the one this version writes.
    Migrate,
    /// The credentials or the user's grants.
    Access,
    /// The URL or what answers on it.
    Endpoint,
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Remedy::Migrate => {
                "the schema does not match this version of Flowhouse: run `flowhouse migrate`"
            }
            Remedy::Access => "check CLICKHOUSE_USER, CLICKHOUSE_PASSWORD and the user's grants",
            Remedy::Endpoint => "check CLICKHOUSE_URL and what answers there",
        })
    }
}

/// Errors that know their class. Anything that is not a ClickHouse error is transient.
pub trait Classify: fmt::Display {
    fn class(&self) -> ErrorClass {
        ErrorClass::Transient
    }
}

impl Classify for clickhouse::error::Error {
    fn class(&self) -> ErrorClass {
        classify(self)
    }
}

impl Classify for anyhow::Error {}
impl Classify for &str {}

/// The one place that decides whether a ClickHouse error is transient or permanent.
pub fn classify(error: &clickhouse::error::Error) -> ErrorClass {
    use clickhouse::error::Error;
    let permanent = |name, remedy| {
        ErrorClass::Permanent(Permanent {
            code: None,
            name,
            remedy,
        })
    };
    match error {
        Error::BadResponse(text) => classify_response(text),
        // The client checks rows against the table's columns before sending them.
        Error::SchemaMismatch(_) => permanent("SCHEMA_MISMATCH", Remedy::Migrate),
        Error::NotEnoughData => permanent("ROW_SHAPE_MISMATCH", Remedy::Migrate),
        Error::Unsupported(_) => permanent("UNSUPPORTED", Remedy::Endpoint),
        // Network, timeouts, compression of a cut-off body, and whatever else: retrying helps
        // or at least costs nothing.
        _ => ErrorClass::Transient,
    }
}

/// A server's answer: `Code: N. DB::Exception: ...`, or only an HTTP status (`404 Not Found`)
/// when the body was empty or did not come from ClickHouse.
fn classify_response(text: &str) -> ErrorClass {
    if let Some(code) = exception_code(text) {
        return match permanent_code(code) {
            Some((name, remedy)) => ErrorClass::Permanent(Permanent {
                code: Some(code),
                name,
                remedy,
            }),
            None => ErrorClass::Transient,
        };
    }
    match http_status(text) {
        // Timeouts and throttling pass; so do server errors, as in Vector.
        Some(408 | 429) | Some(500..=599) | None => ErrorClass::Transient,
        Some(401 | 403) => ErrorClass::Permanent(Permanent {
            code: None,
            name: "HTTP_FORBIDDEN",
            remedy: Remedy::Access,
        }),
        Some(_) => ErrorClass::Permanent(Permanent {
            code: None,
            name: "HTTP_CLIENT_ERROR",
            remedy: Remedy::Endpoint,
        }),
    }
}

fn exception_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

fn http_status(text: &str) -> Option<u16> {
    let status: u16 = text.get(..3)?.parse().ok()?;
    (100..600).contains(&status).then_some(status)
}

/// ClickHouse's codes that no retry fixes (names from `errorCodeToName`). Any other code is
/// transient: TOO_MANY_PARTS (252), MEMORY_LIMIT_EXCEEDED (241), TIMEOUT_EXCEEDED (159),
/// TABLE_IS_READ_ONLY (242), NETWORK_ERROR (210), KEEPER_EXCEPTION (999) and the like.
fn permanent_code(code: u32) -> Option<(&'static str, Remedy)> {
    let migrate = |name| Some((name, Remedy::Migrate));
    let access = |name| Some((name, Remedy::Access));
    match code {
        6 => migrate("CANNOT_PARSE_TEXT"),
        8 => migrate("THERE_IS_NO_COLUMN"),
        10 => migrate("NOT_FOUND_COLUMN_IN_BLOCK"),
        16 => migrate("NO_SUCH_COLUMN_IN_TABLE"),
        20 => migrate("NUMBER_OF_COLUMNS_DOESNT_MATCH"),
        26 => migrate("CANNOT_PARSE_QUOTED_STRING"),
        27 => migrate("CANNOT_PARSE_INPUT_ASSERTION_FAILED"),
        33 => migrate("CANNOT_READ_ALL_DATA"),
        36 => migrate("BAD_ARGUMENTS"),
        38 => migrate("CANNOT_PARSE_DATE"),
        41 => migrate("CANNOT_PARSE_DATETIME"),
        43 => migrate("ILLEGAL_TYPE_OF_ARGUMENT"),
        44 => migrate("ILLEGAL_COLUMN"),
        47 => migrate("UNKNOWN_IDENTIFIER"),
        50 => migrate("UNKNOWN_TYPE"),
        53 => migrate("TYPE_MISMATCH"),
        60 => migrate("UNKNOWN_TABLE"),
        62 => migrate("SYNTAX_ERROR"),
        70 => migrate("CANNOT_CONVERT_TYPE"),
        72 => migrate("CANNOT_PARSE_NUMBER"),
        81 => migrate("UNKNOWN_DATABASE"),
        115 => migrate("UNKNOWN_SETTING"),
        117 => migrate("INCORRECT_DATA"),
        349 => migrate("CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN"),
        386 => migrate("NO_COMMON_TYPE"),
        192 => access("UNKNOWN_USER"),
        291 => access("DATABASE_ACCESS_DENIED"),
        497 => access("ACCESS_DENIED"),
        516 => access("AUTHENTICATION_FAILED"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use clickhouse::error::Error;

    use super::*;

    fn server(code: u32, name: &str) -> Error {
        Error::BadResponse(format!(
            "Code: {code}. DB::Exception: something about it. ({name}) (version 26.9.2.1)"
        ))
    }

    fn permanent_name(error: &Error) -> Option<&'static str> {
        match classify(error) {
            ErrorClass::Permanent(permanent) => Some(permanent.name),
            ErrorClass::Transient => None,
        }
    }

    #[test]
    fn schema_problems_are_permanent_and_ask_for_a_migration() {
        for (code, name) in [
            (60, "UNKNOWN_TABLE"),
            (16, "NO_SUCH_COLUMN_IN_TABLE"),
            (47, "UNKNOWN_IDENTIFIER"),
            (53, "TYPE_MISMATCH"),
            (8, "THERE_IS_NO_COLUMN"),
            (81, "UNKNOWN_DATABASE"),
            (6, "CANNOT_PARSE_TEXT"),
            (27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED"),
            (117, "INCORRECT_DATA"),
        ] {
            assert_eq!(
                classify(&server(code, name)),
                ErrorClass::Permanent(Permanent {
                    code: Some(code),
                    name,
                    remedy: Remedy::Migrate
                }),
                "{name}"
            );
        }
        let mismatch = Error::SchemaMismatch("column `x` is not in table".into());
        assert_eq!(permanent_name(&mismatch), Some("SCHEMA_MISMATCH"));
        assert!(Remedy::Migrate.to_string().contains("flowhouse migrate"));
    }

    #[test]
    fn load_and_network_problems_are_transient() {
        for (code, name) in [
            (252, "TOO_MANY_PARTS"),
            (241, "MEMORY_LIMIT_EXCEEDED"),
            (159, "TIMEOUT_EXCEEDED"),
            (242, "TABLE_IS_READ_ONLY"),
            (202, "TOO_MANY_SIMULTANEOUS_QUERIES"),
            (210, "NETWORK_ERROR"),
            (999, "KEEPER_EXCEPTION"),
            (12345, "SOMETHING_NEW"),
        ] {
            assert_eq!(
                classify(&server(code, name)),
                ErrorClass::Transient,
                "{name}"
            );
        }
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            classify(&Error::Network(Box::new(refused))),
            ErrorClass::Transient
        );
        assert_eq!(classify(&Error::TimedOut), ErrorClass::Transient);
        for status in [
            "500 Internal Server Error",
            "502 Bad Gateway",
            "503 Service Unavailable",
            "429 Too Many Requests",
        ] {
            assert_eq!(
                classify(&Error::BadResponse(status.into())),
                ErrorClass::Transient,
                "{status}"
            );
        }
    }

    #[test]
    fn an_empty_body_still_has_its_code_or_status() {
        // The client reports `Code: N` alone when the server sent the code only in a header.
        assert_eq!(
            permanent_name(&Error::BadResponse("Code: 60".into())),
            Some("UNKNOWN_TABLE")
        );
        assert_eq!(
            classify(&Error::BadResponse("403 Forbidden".into())),
            ErrorClass::Permanent(Permanent {
                code: None,
                name: "HTTP_FORBIDDEN",
                remedy: Remedy::Access
            })
        );
        assert_eq!(
            permanent_name(&Error::BadResponse("404 Not Found".into())),
            Some("HTTP_CLIENT_ERROR")
        );
        assert_eq!(
            permanent_name(&server(516, "AUTHENTICATION_FAILED")),
            Some("AUTHENTICATION_FAILED")
        );
    }

    #[test]
    fn other_errors_are_transient() {
        assert_eq!(
            anyhow::anyhow!("broker down").class(),
            ErrorClass::Transient
        );
        assert_eq!("anything".class(), ErrorClass::Transient);
    }
}
