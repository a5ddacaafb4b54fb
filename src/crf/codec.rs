//! Little-endian field encoding for section payloads: `Enc` appends, `Dec` reads with a bounds
//! check before every read and an error naming the section and the offset.

use super::{CrfError, Result};
use byteorder::{ByteOrder, LittleEndian as LE};

/// Longest string or byte field accepted (paths, names, blobs such as XSAVE or auxv).
pub const MAX_FIELD: usize = 1 << 20;

#[derive(Default)]
pub struct Enc {
    buf: Vec<u8>,
}

impl Enc {
    pub fn new() -> Self {
        Enc { buf: Vec::new() }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.u64(v as u64)
    }
    /// A u32 length followed by the bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields from one section payload. `base` is the stream offset of `buf[0]`.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
    section: &'static str,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8], base: u64, section: &'static str) -> Self {
        Dec { buf, pos: 0, base, section }
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(CrfError::Bad {
                offset: self.base + self.pos as u64,
                what: format!("{} section: {field} runs past the end of the section", self.section),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "u8")?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(LE::read_u32(self.take(4, "u32")?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(LE::read_u64(self.take(8, "u64")?))
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(self.u64()? as i64)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let at = self.offset();
        let n = self.u32()? as usize;
        if n > MAX_FIELD {
            return Err(self.bad_at(at, format!("field length {n} exceeds {MAX_FIELD}")));
        }
        self.take(n, "byte field")
    }
    pub fn str(&mut self) -> Result<String> {
        let at = self.offset();
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad_at(at, "string is not UTF-8".into()))
    }
    /// A count of records to follow, each at least `min_size` bytes: refused if the section
    /// cannot hold that many, so a corrupt count never drives a huge allocation.
    pub fn count(&mut self, min_size: usize) -> Result<usize> {
        let at = self.offset();
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size.max(1)) > self.remaining() {
            return Err(self.bad_at(at, format!("record count {n} does not fit in the section")));
        }
        Ok(n)
    }
    /// Error for a value that decoded but makes no sense.
    pub fn bad_at(&self, offset: u64, what: String) -> CrfError {
        CrfError::Bad { offset, what: format!("{} section: {what}", self.section) }
    }
    /// The payload must be fully consumed: trailing bytes mean a writer/reader mismatch.
    pub fn finish(&self) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(self.bad_at(self.offset(), "unexpected trailing bytes".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_fields() {
        let mut e = Enc::new();
        e.u8(7).u32(0xdead_beef).u64(u64::MAX).i64(-5).str("héllo").bytes(&[1, 2, 3]);
        let b = e.into_bytes();
        let mut d = Dec::new(&b, 100, "TEST");
        assert_eq!(d.u8().unwrap(), 7);
        assert_eq!(d.u32().unwrap(), 0xdead_beef);
        assert_eq!(d.u64().unwrap(), u64::MAX);
        assert_eq!(d.i64().unwrap(), -5);
        assert_eq!(d.str().unwrap(), "héllo");
        assert_eq!(d.bytes().unwrap(), &[1, 2, 3]);
        d.finish().unwrap();
    }

    #[test]
    fn overrun_names_section_and_offset() {
        let b = [1u8, 0, 0];
        let mut d = Dec::new(&b, 1000, "TEST");
        let e = d.u32().unwrap_err().to_string();
        assert!(e.contains("offset 1000") && e.contains("TEST"), "{e}");
    }

    #[test]
    fn huge_count_is_refused_without_allocating() {
        let mut e = Enc::new();
        e.u32(u32::MAX);
        let b = e.into_bytes();
        let mut d = Dec::new(&b, 0, "TEST");
        assert!(d.count(16).is_err());
    }
}
