//! LEB128 variable-length integers and a bounds-checked cursor over encoded bytes.
//!
//! The hot formats (log ops, message content, catalog pages) are written by hand with these: a
//! timestamp delta or an id delta usually takes one to three bytes, and decoding borrows from the
//! input instead of allocating. Every read is checked: running off the end, an over-long varint or
//! a length beyond the input is a [`Truncated`] error, never a panic.

/// Encoded bytes ended early, or a varint or length was malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// Offset in the input where reading failed.
    pub offset: usize,
}

/// Appends `value` as an unsigned LEB128 varint (1 to 10 bytes).
pub fn put_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a signed value zigzag-encoded, so small negative numbers stay short.
pub fn put_i64(out: &mut Vec<u8>, value: i64) {
    put_u64(out, zigzag(value));
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// How many bytes [`put_u64`] writes for `value`.
pub fn u64_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// How many bytes [`put_i64`] writes for `value`.
pub fn i64_len(value: i64) -> usize {
    u64_len(zigzag(value))
}

/// Appends a length-prefixed byte string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over encoded bytes.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, offset: 0 }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.offset == self.bytes.len()
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    fn fail<T>(&self) -> Result<T, Truncated> {
        Err(Truncated { offset: self.offset })
    }

    pub fn u8(&mut self) -> Result<u8, Truncated> {
        let Some(&byte) = self.bytes.get(self.offset) else { return self.fail() };
        self.offset += 1;
        Ok(byte)
    }

    pub fn u32_le(&mut self) -> Result<u32, Truncated> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn u64_le(&mut self) -> Result<u64, Truncated> {
        let bytes = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(word))
    }

    /// An unsigned LEB128 varint of at most 10 bytes that fits in a `u64`.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        let start = self.offset;
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                self.offset = start;
                return self.fail();
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        self.offset = start;
        self.fail()
    }

    /// A varint that must fit in a `u32`.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        let start = self.offset;
        let value = self.u64()?;
        u32::try_from(value).or_else(|_| {
            self.offset = start;
            self.fail()
        })
    }

    /// A zigzag varint that must fit in an `i32`.
    pub fn i32(&mut self) -> Result<i32, Truncated> {
        let start = self.offset;
        let raw = self.u64()?;
        let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
        i32::try_from(value).or_else(|_| {
            self.offset = start;
            self.fail()
        })
    }

    /// A zigzag varint.
    pub fn i64(&mut self) -> Result<i64, Truncated> {
        let raw = self.u64()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// The next `count` bytes.
    pub fn take(&mut self, count: usize) -> Result<&'a [u8], Truncated> {
        if count > self.remaining() {
            return self.fail();
        }
        let slice = &self.bytes[self.offset..self.offset + count];
        self.offset += count;
        Ok(slice)
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], Truncated> {
        let start = self.offset;
        let length = self.u64()?;
        match usize::try_from(length) {
            Ok(length) if length <= self.remaining() => self.take(length),
            _ => {
                self.offset = start;
                self.fail()
            }
        }
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, Truncated> {
        let start = self.offset;
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes).or_else(|_| {
            self.offset = start;
            self.fail()
        })
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.offset..];
        self.offset = self.bytes.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width_and_refuse_overlong_input() {
        let values = [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX - 1, u64::MAX];
        for value in values {
            let mut out = Vec::new();
            put_u64(&mut out, value);
            let mut reader = Reader::new(&out);
            assert_eq!(reader.u64(), Ok(value));
            assert!(reader.is_empty());
        }
        for value in [0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            let mut out = Vec::new();
            put_i64(&mut out, value);
            assert_eq!(Reader::new(&out).i64(), Ok(value));
        }
        // Eleven continuation bytes, and a tenth byte with more than one bit, are not a u64.
        assert!(Reader::new(&[0x80; 11]).u64().is_err());
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert!(Reader::new(&too_big).u64().is_err());
        // A length beyond the input fails without reading.
        let mut out = Vec::new();
        put_u64(&mut out, 5);
        out.extend_from_slice(b"abc");
        let mut reader = Reader::new(&out);
        assert_eq!(reader.bytes(), Err(Truncated { offset: 0 }));
        assert!(Reader::new(&[]).u8().is_err());
        let mut out = Vec::new();
        put_u64(&mut out, u64::from(u32::MAX) + 1);
        assert!(Reader::new(&out).u32().is_err());
    }
}
