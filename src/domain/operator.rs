use super::{
    Timestamp,
    text::{self, Kind},
};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorName(String);

impl OperatorName {
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        text::required(field, raw, Kind::Name).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many ACTIVE contacts an operator may hold; never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxLoad(i32);

impl MaxLoad {
    pub fn parse(field: &str, raw: i32) -> Result<Self> {
        if raw < 0 {
            return Err(Error::invalid(field, "must be zero or more"));
        }
        Ok(Self(raw))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

#[derive(Debug, Clone)]
pub struct NewOperator {
    pub name: OperatorName,
    pub is_active: bool,
    pub max_load: MaxLoad,
}

/// A partial update; at least one field is present.
#[derive(Debug, Clone)]
pub struct OperatorChanges {
    name: Option<OperatorName>,
    is_active: Option<bool>,
    max_load: Option<MaxLoad>,
}

impl OperatorChanges {
    pub fn new(
        name: Option<OperatorName>,
        is_active: Option<bool>,
        max_load: Option<MaxLoad>,
    ) -> Result<Self> {
        if name.is_none() && is_active.is_none() && max_load.is_none() {
            return Err(Error::invalid(
                "name, is_active, max_load",
                "at least one field to change must be present",
            ));
        }
        Ok(Self {
            name,
            is_active,
            max_load,
        })
    }

    pub fn name(&self) -> Option<&OperatorName> {
        self.name.as_ref()
    }

    pub fn is_active(&self) -> Option<bool> {
        self.is_active
    }

    pub fn max_load(&self) -> Option<MaxLoad> {
        self.max_load
    }

    /// Whether the change can give the operator room for more contacts.
    pub fn may_add_capacity(&self) -> bool {
        self.is_active == Some(true) || self.max_load.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub id: i64,
    pub name: String,
    pub is_active: bool,
    pub max_load: i32,
    pub active_load: i32,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_trimmed_and_blank_rejected() {
        assert_eq!(
            OperatorName::parse("name", "  Ann ").unwrap().as_str(),
            "Ann"
        );
        assert!(OperatorName::parse("name", " \t ").is_err());
        assert!(OperatorName::parse("name", "").is_err());
        assert!(OperatorName::parse("name", &"x".repeat(256)).is_err());
        assert!(OperatorName::parse("name", &"x".repeat(255)).is_ok());
    }

    #[test]
    fn max_load_must_not_be_negative() {
        assert_eq!(MaxLoad::parse("max_load", 0).unwrap().get(), 0);
        let err = MaxLoad::parse("max_load", -1).unwrap_err();
        assert!(err.to_string().starts_with("max_load:"), "{err}");
    }

    #[test]
    fn changes_need_at_least_one_field() {
        assert!(OperatorChanges::new(None, None, None).is_err());
        assert!(OperatorChanges::new(None, Some(false), None).is_ok());
    }
}
