use crate::{Error, Result};

/// The longest text field the API accepts, in characters.
pub const MAX_TEXT_CHARS: usize = 255;

/// Which control characters (Unicode `Cc`: NUL, the rest of C0, DEL, C1) a
/// field admits. None does, except tab in a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Identifiers, keys and the like: no control character at all.
    Plain,
    /// A display name: tab is allowed.
    Name,
}

/// Rejects control characters anywhere in `raw`, trimmed or not.
pub(crate) fn check_controls(field: &str, raw: &str, kind: Kind) -> Result<()> {
    let found = raw
        .chars()
        .enumerate()
        .find(|&(_, c)| c.is_control() && !(kind == Kind::Name && c == '\t'));
    match found {
        None => Ok(()),
        Some((position, c)) => Err(Error::invalid(
            field,
            format!(
                "must not contain control characters{}, found U+{:04X} at character {}",
                if kind == Kind::Name {
                    " other than tab"
                } else {
                    ""
                },
                u32::from(c),
                position + 1
            ),
        )),
    }
}

/// Rejects control characters, trims the input and rejects it if it is
/// still too long.
pub(crate) fn bounded_trimmed<'a>(field: &str, raw: &'a str, kind: Kind) -> Result<&'a str> {
    check_controls(field, raw, kind)?;
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
pub(crate) fn required(field: &str, raw: &str, kind: Kind) -> Result<String> {
    let value = bounded_trimmed(field, raw, kind)?;
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be blank"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_rejected_and_named() {
        for raw in [
            "a\0b", "\0", "ab\u{1}", "a\nb", "a\rb", "x\u{7f}", "x\u{85}", "x\u{9f}",
        ] {
            let error = bounded_trimmed("lead.external_id", raw, Kind::Plain).unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with("lead.external_id: "), "{message}");
            assert!(message.contains("control characters"), "{message}");
        }
        let error = bounded_trimmed("bot_id", "bot\0", Kind::Plain).unwrap_err();
        assert!(
            error.to_string().contains("U+0000 at character 4"),
            "{error}"
        );
    }

    #[test]
    fn a_name_may_hold_tabs_and_nothing_else_of_the_kind() {
        assert_eq!(
            bounded_trimmed("name", "Ann\tLee", Kind::Name).unwrap(),
            "Ann\tLee"
        );
        assert!(bounded_trimmed("name", "Ann\tLee", Kind::Plain).is_err());
        // Leading and trailing tabs are trimmed like any whitespace.
        assert_eq!(
            bounded_trimmed("name", "\tAnn\t", Kind::Name).unwrap(),
            "Ann"
        );
        for raw in ["Ann\0", "Ann\nLee", "\rAnn", "Ann\u{1b}[31m"] {
            let error = bounded_trimmed("name", raw, Kind::Name).unwrap_err();
            assert!(error.to_string().contains("other than tab"), "{error}");
        }
        assert!(required("name", "\t", Kind::Name).is_err(), "blank");
    }

    #[test]
    fn other_unicode_passes() {
        for raw in [
            "Zoë",
            "李雷",
            "emoji 🙂",
            "zero\u{200b}width",
            "nbsp\u{a0}x",
        ] {
            assert!(bounded_trimmed("name", raw, Kind::Plain).is_ok(), "{raw:?}");
        }
    }
}
