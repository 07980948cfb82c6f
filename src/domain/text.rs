use crate::{Error, Result};

/// The longest text field the API accepts, in characters.
pub const MAX_TEXT_CHARS: usize = 255;

/// Trims the input and rejects it if it is still too long.
pub(crate) fn bounded_trimmed<'a>(field: &str, raw: &'a str) -> Result<&'a str> {
    let value = raw.trim();
    check_length(field, value)?;
    Ok(value)
}

pub(crate) fn check_length(field: &str, value: &str) -> Result<()> {
    if value.chars().count() > MAX_TEXT_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Like [`bounded_trimmed`], and blank input is an error.
pub(crate) fn required(field: &str, raw: &str) -> Result<String> {
    let value = bounded_trimmed(field, raw)?;
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be blank"));
    }
    Ok(value.to_owned())
}
