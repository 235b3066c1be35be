//! Strings and label maps that borrow from the JSON they were parsed from when they can.
//!
//! serde borrows a `Cow<str>` only when it is a field of its own; nested in a map or a vector it
//! always allocates. [`CowStr`] borrows wherever it sits, which keeps parsing an event to a few
//! allocations (the label maps) instead of one per string.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A string borrowed from the input when it has no escapes, owned otherwise.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CowStr<'a>(pub Cow<'a, str>);

impl<'a> CowStr<'a> {
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }

    /// An owned copy of the text. Not `to_string()`: that goes through `Display` and the
    /// formatter, which was 8 % of ingest's CPU when every label of every row was copied so.
    pub fn to_owned_string(&self) -> String {
        String::from(&*self.0)
    }

    pub fn owned(text: impl Into<String>) -> CowStr<'static> {
        CowStr(Cow::Owned(text.into()))
    }
}

impl Deref for CowStr<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

// Ordering and equality are those of the underlying `str`, so maps keyed by `CowStr` can be
// looked up with a plain `&str`.
impl std::borrow::Borrow<str> for CowStr<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CowStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for CowStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'a> From<&'a str> for CowStr<'a> {
    fn from(text: &'a str) -> Self {
        CowStr(Cow::Borrowed(text))
    }
}

impl From<String> for CowStr<'static> {
    fn from(text: String) -> Self {
        CowStr(Cow::Owned(text))
    }
}

impl Serialize for CowStr<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CowStrVisitor;
        impl<'de> Visitor<'de> for CowStrVisitor {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(CowStrVisitor)
    }
}

/// A resource's labels: string keys to string values, sorted by key. A key repeated in the JSON
/// keeps its last value, as Prefect's own (pydantic) parsing does.
pub type Labels<'a> = BTreeMap<CowStr<'a>, CowStr<'a>>;
