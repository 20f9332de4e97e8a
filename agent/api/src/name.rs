//! Bottle names: `^[a-z][a-z0-9-]{0,30}$`, unique per host.

/// Longest bottle name, in bytes.
pub const MAX_NAME_LEN: usize = 31;

/// Why a bottle name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("bottle name is empty; use 1-31 characters: a lowercase letter, then lowercase letters, digits or '-'")]
    Empty,
    #[error("bottle name is {0} bytes long; the limit is 31")]
    TooLong(usize),
    #[error("bottle name must start with a lowercase letter (a-z)")]
    BadStart,
    #[error("bottle name may only contain lowercase letters, digits and '-'; found {0:?}")]
    BadChar(char),
}

/// Checks a bottle name against `^[a-z][a-z0-9-]{0,30}$`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let first = chars.next().ok_or(NameError::Empty)?;
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if !first.is_ascii_lowercase() {
        return Err(NameError::BadStart);
    }
    match chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        Some(bad) => Err(NameError::BadChar(bad)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for name in ["a", "dev", "my-bottle-2", "a234567890123456789012345678901"] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_invalid_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("1abc"), Err(NameError::BadStart));
        assert_eq!(validate_name("-abc"), Err(NameError::BadStart));
        assert_eq!(validate_name("Abc"), Err(NameError::BadStart));
        assert_eq!(validate_name("ab_c"), Err(NameError::BadChar('_')));
        assert_eq!(validate_name("abC"), Err(NameError::BadChar('C')));
        assert_eq!(validate_name("ab/../c"), Err(NameError::BadChar('/')));
        assert_eq!(
            validate_name("a2345678901234567890123456789012"),
            Err(NameError::TooLong(32))
        );
        assert_eq!(validate_name("é"), Err(NameError::BadStart));
    }
}
