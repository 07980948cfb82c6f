use crate::{Error, Result};

const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 1000;
const TOKEN_PREFIX: &str = "v1.";

/// Keyset pagination: a page is the rows with id greater than `after`, in id
/// order, so any depth costs one index seek.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    size: i64,
    after: i64,
}

impl PageRequest {
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self> {
        let size = match i64::from(page_size) {
            0 => DEFAULT_PAGE_SIZE,
            size if size < 0 => {
                return Err(Error::invalid("page_size", "must not be negative"));
            }
            size => size.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            0
        } else {
            decode_token(page_token).ok_or_else(|| Error::invalid("page_token", "is malformed"))?
        };
        Ok(Self { size, after })
    }

    pub fn size(self) -> i64 {
        self.size
    }

    /// Rows with an id greater than this one form the page.
    pub fn after(self) -> i64 {
        self.after
    }

    /// Builds the page from up to `size + 1` rows fetched in id order: the
    /// extra row only tells that another page exists.
    pub fn paginate<T>(self, mut rows: Vec<T>, id: impl Fn(&T) -> i64) -> Page<T> {
        let more = rows.len() as i64 > self.size;
        rows.truncate(self.size as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => encode_token(id(last)),
            _ => String::new(),
        };
        Page {
            items: rows,
            next_page_token,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

/// The token of the page that starts after the row with this id: what
/// `next_page_token` would be after a page ending there.
pub fn page_token_after(id: i64) -> String {
    encode_token(id)
}

fn encode_token(after: i64) -> String {
    format!("{TOKEN_PREFIX}{after:x}")
}

fn decode_token(token: &str) -> Option<i64> {
    let hex = token.strip_prefix(TOKEN_PREFIX)?;
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(hex, 16).ok().filter(|after| *after > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_defaults_caps_and_rejects_negative() {
        assert_eq!(PageRequest::parse(0, "").unwrap().size(), 50);
        assert_eq!(PageRequest::parse(7, "").unwrap().size(), 7);
        assert_eq!(PageRequest::parse(5000, "").unwrap().size(), 1000);
        let err = PageRequest::parse(-1, "").unwrap_err();
        assert!(err.to_string().starts_with("page_size:"), "{err}");
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_rejected() {
        let token = encode_token(12345);
        assert_eq!(PageRequest::parse(0, &token).unwrap().after(), 12345);
        for bad in [
            "x",
            "v1.",
            "v1.zz",
            "v1.-1",
            "v1.0",
            "12",
            "v1.+5",
            "v1.ffffffffffffffffff",
        ] {
            let err = PageRequest::parse(0, bad).unwrap_err();
            assert!(err.to_string().starts_with("page_token:"), "{bad}: {err}");
        }
    }

    #[test]
    fn paginate_emits_a_token_only_when_more_rows_exist() {
        let page = PageRequest::parse(2, "").unwrap();
        let full = page.paginate(vec![1, 2, 3], |id| *id);
        assert_eq!(full.items, [1, 2]);
        assert_eq!(full.next_page_token, encode_token(2));
        let last = page.paginate(vec![4, 5], |id| *id);
        assert_eq!(last.items, [4, 5]);
        assert_eq!(last.next_page_token, "");
    }
}
