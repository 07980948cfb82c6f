use super::text::{self, Kind};
use crate::{Error, Result};

/// The caller's own identifier for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalId(String);

/// A phone number reduced to an optional leading `+` and 5 to 20 digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

/// A lower-cased address of the form `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

/// A person's display name; empty means unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadName(String);

impl ExternalId {
    /// `None` for blank input: the identifier is absent.
    pub fn parse(field: &str, raw: &str) -> Result<Option<Self>> {
        let value = text::bounded_trimmed(field, raw, Kind::Plain)?;
        Ok((!value.is_empty()).then(|| Self(value.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Phone {
    /// `None` for blank input: the identifier is absent.
    pub fn parse(field: &str, raw: &str) -> Result<Option<Self>> {
        let value = text::bounded_trimmed(field, raw, Kind::Plain)?;
        if value.is_empty() {
            return Ok(None);
        }
        let normalized: String = value
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        let digits = normalized.strip_prefix('+').unwrap_or(&normalized);
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(Error::invalid(
                field,
                "may hold only digits, an optional leading '+', spaces, dashes, dots and parentheses",
            ));
        }
        if !(5..=20).contains(&digits.len()) {
            return Err(Error::invalid(
                field,
                format!("must have 5 to 20 digits, got {}", digits.len()),
            ));
        }
        Ok(Some(Self(normalized)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Email {
    /// `None` for blank input: the identifier is absent.
    pub fn parse(field: &str, raw: &str) -> Result<Option<Self>> {
        let value = text::bounded_trimmed(field, raw, Kind::Plain)?;
        if value.is_empty() {
            return Ok(None);
        }
        let value = value.to_lowercase();
        // Lower-casing can lengthen a string ('İ' becomes two characters).
        text::check_length(field, &value)?;
        let well_formed = match value.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !value.chars().any(char::is_whitespace)
            }
            None => false,
        };
        if !well_formed {
            return Err(Error::invalid(field, "must look like local@domain"));
        }
        Ok(Some(Self(value)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl LeadName {
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        text::bounded_trimmed(field, raw, Kind::Name).map(|name| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who is behind a contact: at least one identifier is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadIdentity {
    external_id: Option<ExternalId>,
    phone: Option<Phone>,
    email: Option<Email>,
    name: LeadName,
}

impl LeadIdentity {
    pub fn new(
        external_id: Option<ExternalId>,
        phone: Option<Phone>,
        email: Option<Email>,
        name: LeadName,
        field: &str,
    ) -> Result<Self> {
        if external_id.is_none() && phone.is_none() && email.is_none() {
            return Err(Error::invalid(
                field,
                "at least one of external_id, phone and email must be non-blank",
            ));
        }
        Ok(Self {
            external_id,
            phone,
            email,
            name,
        })
    }

    pub fn external_id(&self) -> Option<&ExternalId> {
        self.external_id.as_ref()
    }

    pub fn phone(&self) -> Option<&Phone> {
        self.phone.as_ref()
    }

    pub fn email(&self) -> Option<&Email> {
        self.email.as_ref()
    }

    pub fn name(&self) -> &LeadName {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(raw: &str) -> Result<Option<String>> {
        Phone::parse("lead.phone", raw).map(|p| p.map(|p| p.as_str().to_owned()))
    }

    fn email(raw: &str) -> Result<Option<String>> {
        Email::parse("lead.email", raw).map(|e| e.map(|e| e.as_str().to_owned()))
    }

    #[test]
    fn phone_drops_separators() {
        assert_eq!(
            phone(" +7 (912) 345-67.89 ").unwrap().unwrap(),
            "+79123456789"
        );
        assert_eq!(phone("12345").unwrap().unwrap(), "12345");
        assert_eq!(phone("  ").unwrap(), None);
    }

    #[test]
    fn phone_needs_5_to_20_digits_and_nothing_else() {
        assert!(phone("1234").is_err());
        assert!(phone(&"1".repeat(20)).is_ok());
        assert!(phone(&"1".repeat(21)).is_err());
        assert!(phone("+").is_err());
        assert!(phone("12a456").is_err());
        assert!(phone("12+3456").is_err());
        assert!(phone("++123456").is_err());
        assert!(phone("()").is_err());
        let err = phone("abc").unwrap_err();
        assert!(err.to_string().starts_with("lead.phone:"), "{err}");
    }

    #[test]
    fn email_is_lower_cased_and_checked() {
        assert_eq!(
            email(" Ann@Example.COM ").unwrap().unwrap(),
            "ann@example.com"
        );
        assert_eq!(email("").unwrap(), None);
        for bad in ["ann", "@example.com", "ann@", "a@b@c", "a b@c.d"] {
            assert!(email(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn over_255_characters_after_trimming_is_rejected() {
        assert!(ExternalId::parse("lead.external_id", &"x".repeat(256)).is_err());
        assert!(ExternalId::parse("lead.external_id", &"x".repeat(255)).is_ok());
        let padded = format!("  {}  ", "x".repeat(255));
        assert!(ExternalId::parse("lead.external_id", &padded).is_ok());
        assert!(LeadName::parse("lead.name", &"é".repeat(256)).is_err());
        let grows = format!("{}@x.io", "İ".repeat(200));
        let err = Email::parse("lead.email", &grows).unwrap_err();
        assert!(err.to_string().starts_with("lead.email:"), "{err}");
    }

    #[test]
    fn control_characters_are_rejected_except_tab_in_the_name() {
        let error = ExternalId::parse("lead.external_id", "ext\0").unwrap_err();
        assert!(
            error.to_string().starts_with("lead.external_id:"),
            "{error}"
        );
        let error = Phone::parse("lead.phone", "+1555\u{0}0001").unwrap_err();
        assert!(error.to_string().contains("control"), "{error}");
        let error = Email::parse("lead.email", "a@b.c\u{7f}").unwrap_err();
        assert!(error.to_string().starts_with("lead.email:"), "{error}");
        assert!(ExternalId::parse("lead.external_id", "a\tb").is_err());
        assert_eq!(
            LeadName::parse("lead.name", "Ann\tLee").unwrap().as_str(),
            "Ann\tLee"
        );
        let error = LeadName::parse("lead.name", "Ann\0").unwrap_err();
        assert!(error.to_string().starts_with("lead.name:"), "{error}");
    }

    #[test]
    fn identity_needs_an_identifier() {
        let name = LeadName::parse("lead.name", "Ann").unwrap();
        assert!(LeadIdentity::new(None, None, None, name.clone(), "lead").is_err());
        let ext = ExternalId::parse("lead.external_id", "42").unwrap();
        assert!(LeadIdentity::new(ext, None, None, name, "lead").is_ok());
    }
}
