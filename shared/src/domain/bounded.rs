//! Strings with a length bound checked while a request is parsed, so an
//! oversized field is refused before anything is built from it, with the
//! field's path in the answer (422 `validation_failed`).

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// What a bounded field's parse error starts with; the JSON body parser
/// turns such errors into a validation failure naming the field.
pub const OVER_BOUND: &str = "longer than its bound: at most ";

/// A string of at most `MAX` bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Bounded<const MAX: usize>(String);

impl<const MAX: usize> Bounded<MAX> {
    /// `None` when `text` is longer than the bound.
    pub fn new(text: impl Into<String>) -> Option<Self> {
        let text = text.into();
        (text.len() <= MAX).then_some(Bounded(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> std::ops::Deref for Bounded<MAX> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> From<Bounded<MAX>> for String {
    fn from(b: Bounded<MAX>) -> String {
        b.0
    }
}

impl<const MAX: usize> fmt::Display for Bounded<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Bounded<MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.len() > MAX {
            return Err(serde::de::Error::custom(format!("{OVER_BOUND}{MAX} bytes")));
        }
        Ok(Bounded(text))
    }
}

impl<const MAX: usize> utoipa::PartialSchema for Bounded<MAX> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .max_length(Some(MAX))
            .into()
    }
}

impl<const MAX: usize> utoipa::ToSchema for Bounded<MAX> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_over_its_bound_is_refused_as_it_is_parsed() {
        let ok: Bounded<4> = serde_json::from_str(r#""abcd""#).unwrap();
        assert_eq!(ok.as_str(), "abcd");
        let err = serde_json::from_str::<Bounded<4>>(r#""abcde""#).unwrap_err();
        assert!(err.to_string().starts_with(OVER_BOUND), "{err}");
        // Bytes, not characters: what a store and a response pay for.
        assert!(serde_json::from_str::<Bounded<4>>(r#""ééé""#).is_err());
        assert!(Bounded::<4>::new("abcde").is_none());
    }
}
