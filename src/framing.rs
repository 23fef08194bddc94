//! Length-prefixed framing: the header formats the engine reads natively.

/// An integer header described by a Python `struct` format such as `">I"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthFormat {
    big_endian: bool,
    size: usize,
    signed: bool,
}

impl LengthFormat {
    /// Parse a one-integer struct format; None for anything else.
    pub fn parse(fmt: &str) -> Option<LengthFormat> {
        let mut chars = fmt.chars();
        let (big_endian, code) = match (chars.next()?, chars.next()) {
            ('>' | '!', Some(code)) => (true, code),
            ('<', Some(code)) => (false, code),
            // Native order and standard sizes only when they agree with "=".
            ('=', Some(code)) => (cfg!(target_endian = "big"), code),
            (code, None) => (cfg!(target_endian = "big"), code),
            _ => return None,
        };
        if chars.next().is_some() {
            return None;
        }
        let native = !matches!(fmt.chars().next(), Some('>' | '!' | '<' | '='));
        let (size, signed) = match code {
            'B' => (1, false),
            'b' => (1, true),
            'H' => (2, false),
            'h' => (2, true),
            'I' => (4, false),
            'i' => (4, true),
            'L' if !native => (4, false),
            'l' if !native => (4, true),
            'Q' => (8, false),
            'q' => (8, true),
            _ => return None,
        };
        Some(LengthFormat {
            big_endian,
            size,
            signed,
        })
    }

    /// The header size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The length a header holds; None when it is negative.
    pub fn read(&self, header: &[u8]) -> Option<u64> {
        if header.len() != self.size {
            return None;
        }
        let mut buf = [0u8; 8];
        if self.big_endian {
            buf[8 - self.size..].copy_from_slice(header);
        } else {
            buf[..self.size].copy_from_slice(header);
        }
        let raw = if self.big_endian {
            u64::from_be_bytes(buf)
        } else {
            u64::from_le_bytes(buf)
        };
        if self.signed {
            let shift = 64 - 8 * self.size as u32;
            let value = ((raw << shift) as i64) >> shift;
            u64::try_from(value).ok()
        } else {
            Some(raw)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_and_little_endian_headers() {
        let be = LengthFormat::parse(">I").unwrap();
        assert_eq!(be.read(&[0, 0, 1, 2]), Some(258));
        let le = LengthFormat::parse("<H").unwrap();
        assert_eq!(le.read(&[2, 1]), Some(258));
        let q = LengthFormat::parse("!Q").unwrap();
        assert_eq!(q.size(), 8);
        assert_eq!(q.read(&[0, 0, 0, 0, 0, 0, 0, 7]), Some(7));
    }

    #[test]
    fn negative_signed_lengths_are_rejected() {
        let i = LengthFormat::parse(">i").unwrap();
        assert_eq!(i.read(&[0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(i.read(&[0, 0, 0, 5]), Some(5));
    }

    #[test]
    fn unsupported_formats_are_none() {
        assert!(LengthFormat::parse(">2I").is_none());
        assert!(LengthFormat::parse("@L").is_none());
        assert!(LengthFormat::parse("L").is_none());
        assert!(LengthFormat::parse(">f").is_none());
        assert!(LengthFormat::parse("").is_none());
        assert_eq!(LengthFormat::parse(">L").map(|f| f.size()), Some(4));
    }
}
