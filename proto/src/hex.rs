//! Hex text of fixed-size byte strings: lowercase out; in, exactly two digits of either case per
//! byte and nothing else (no sign, no spaces), so each value has one spelling we write.

/// Why text is not the hex of `N` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("{found} characters where {expected} hex digits belong")]
    Length { expected: usize, found: usize },
    #[error("a non-hex character at position {0}")]
    NotHex(usize),
}

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The `N` bytes `text` spells (`2 * N` hex digits).
pub fn decode<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return Err(HexError::Length {
            expected: 2 * N,
            found: text.chars().count(),
        });
    }
    let mut out = [0u8; N];
    for (i, slot) in out.iter_mut().enumerate() {
        let hi = value(digits[2 * i]).ok_or(HexError::NotHex(2 * i))?;
        let lo = value(digits[2 * i + 1]).ok_or(HexError::NotHex(2 * i + 1))?;
        *slot = hi << 4 | lo;
    }
    Ok(out)
}

fn value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_every_other_spelling() {
        let bytes = [0x00, 0x01, 0x7f, 0x80, 0xab, 0xff];
        assert_eq!(encode(&bytes), "00017f80abff");
        assert_eq!(decode::<6>("00017f80abff"), Ok(bytes));
        assert_eq!(decode::<6>("00017F80ABFF"), Ok(bytes));
        assert_eq!(
            decode::<2>("abc"),
            Err(HexError::Length {
                expected: 4,
                found: 3
            })
        );
        // `u8::from_str_radix` would take "+f"; a hex value here has one spelling per case.
        assert_eq!(decode::<2>("+fab"), Err(HexError::NotHex(0)));
        assert_eq!(decode::<2>("ab g"), Err(HexError::NotHex(2)));
        assert_eq!(decode::<1>("é"), Err(HexError::NotHex(0)));
        assert_eq!(decode::<0>(""), Ok([]));
    }
}
