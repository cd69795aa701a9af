//! NTP extension fields (RFC 7822) and the NTS field types (RFC 8915, section 5).

use crate::reader::{BufferTooSmall, Reader, Writer};

/// Extension field types defined by RFC 8915, section 5.
pub mod field_type {
    pub const UNIQUE_IDENTIFIER: u16 = 0x0104;
    pub const COOKIE: u16 = 0x0204;
    pub const COOKIE_PLACEHOLDER: u16 = 0x0304;
    pub const AUTHENTICATOR: u16 = 0x0404;
}

/// RFC 7822, section 3: an extension field is at least 16 octets long and a
/// multiple of 4 octets (type and length included).
pub const MIN_FIELD_LEN: usize = 16;
const FIELD_HEADER_LEN: usize = 4;

/// One extension field as found on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawField<'a> {
    pub field_type: u16,
    /// Body without the 4-byte type/length header, padding included.
    pub body: &'a [u8],
    /// Offset of the field's first byte from the start of the parsed region.
    pub offset: usize,
}

/// Why a run of extension fields did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Fewer than 4 bytes left, or a length running past the packet.
    #[error("extension field truncated")]
    Truncated,
    /// A length below 16 or not a multiple of 4.
    #[error("extension field length invalid")]
    BadLength,
}

/// Iterates over the extension fields in `buf` (the bytes after the header).
///
/// Yields an error once and then stops if the fields are malformed.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    reader: Reader<'a>,
    base: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    /// `base` is added to every reported offset (pass the header length to get
    /// offsets relative to the packet start).
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Self {
            reader: Reader::new(buf),
            base,
            failed: false,
        }
    }

    fn next_field(&mut self) -> Result<RawField<'a>, FieldError> {
        let offset = self.base + self.reader.position();
        let field_type = self.reader.u16().ok_or(FieldError::Truncated)?;
        let len = usize::from(self.reader.u16().ok_or(FieldError::Truncated)?);
        if len < MIN_FIELD_LEN || len % 4 != 0 {
            return Err(FieldError::BadLength);
        }
        let body = self
            .reader
            .take(len - FIELD_HEADER_LEN)
            .ok_or(FieldError::Truncated)?;
        Ok(RawField {
            field_type,
            body,
            offset,
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<RawField<'a>, FieldError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.is_empty() {
            return None;
        }
        let item = self.next_field();
        self.failed = item.is_err();
        Some(item)
    }
}

/// Rounds `n` up to a multiple of 4.
pub const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Encoded length of a field whose body is `body_len` bytes before padding.
pub const fn field_len(body_len: usize) -> usize {
    let n = FIELD_HEADER_LEN + pad4(body_len);
    if n < MIN_FIELD_LEN {
        MIN_FIELD_LEN
    } else {
        n
    }
}

/// Writes the header of a field whose body is `body_len` bytes before
/// padding and returns its whole body, padding included, for the caller to
/// fill (it holds whatever `w`'s buffer held).
pub fn reserve_field<'w>(
    w: &'w mut Writer<'_>,
    field_type: u16,
    body_len: usize,
) -> Result<&'w mut [u8], BufferTooSmall> {
    let len = field_len(body_len);
    w.put_u16(field_type)?;
    w.put_u16(u16::try_from(len).map_err(|_| BufferTooSmall)?)?;
    w.reserve(len - FIELD_HEADER_LEN)
}

/// Writes a field with the given body, zero-padded to a valid length.
pub fn write_field(w: &mut Writer<'_>, field_type: u16, body: &[u8]) -> Result<(), BufferTooSmall> {
    let out = reserve_field(w, field_type, body.len())?;
    let (head, padding) = out.split_at_mut_checked(body.len()).ok_or(BufferTooSmall)?;
    head.copy_from_slice(body);
    padding.fill(0);
    Ok(())
}

/// Writes a field whose body is `body_len` zero bytes (a Cookie Placeholder).
pub fn write_zero_field(
    w: &mut Writer<'_>,
    field_type: u16,
    body_len: usize,
) -> Result<(), BufferTooSmall> {
    reserve_field(w, field_type, body_len)?.fill(0);
    Ok(())
}

/// The parsed body of an NTS Authenticator and Encrypted Extension Fields
/// field (RFC 8915, section 5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticator<'a> {
    pub nonce: &'a [u8],
    /// SIV tag followed by the encrypted extension fields.
    pub ciphertext: &'a [u8],
}

impl<'a> Authenticator<'a> {
    pub fn decode(body: &'a [u8]) -> Option<Self> {
        let mut r = Reader::new(body);
        let nonce_len = usize::from(r.u16()?);
        let ct_len = usize::from(r.u16()?);
        let nonce = r.take(nonce_len)?;
        r.take(pad4(nonce_len) - nonce_len)?;
        let ciphertext = r.take(ct_len)?;
        r.take(pad4(ct_len) - ct_len)?;
        // Anything left is the optional additional padding.
        Some(Self { nonce, ciphertext })
    }

    /// Body length for a nonce and ciphertext of the given sizes.
    pub const fn body_len(nonce_len: usize, ct_len: usize) -> usize {
        4 + pad4(nonce_len) + pad4(ct_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_odd_lengths_are_rejected() {
        let mut f = Fields::new(&[0x01, 0x04, 0x00, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0], 48);
        assert_eq!(f.next(), Some(Err(FieldError::BadLength)));
        assert_eq!(f.next(), None);
        let mut f = Fields::new(&[0x01, 0x04, 0x00, 0x11], 0);
        assert_eq!(f.next(), Some(Err(FieldError::BadLength)));
        let mut f = Fields::new(&[0x01, 0x04, 0x00, 0x14, 0, 0], 0);
        assert_eq!(f.next(), Some(Err(FieldError::Truncated)));
        let mut f = Fields::new(&[0x01, 0x04], 0);
        assert_eq!(f.next(), Some(Err(FieldError::Truncated)));
    }

    #[test]
    fn write_then_read_pads_to_minimum() {
        let mut buf = [0xffu8; 32];
        let mut w = Writer::new(&mut buf);
        write_field(&mut w, field_type::COOKIE, &[1, 2, 3]).unwrap_or(());
        assert_eq!(w.position(), 16);
        let fields: Vec<_> = Fields::new(buf.get(..16).unwrap_or(&[]), 48).collect();
        assert_eq!(
            fields,
            vec![Ok(RawField {
                field_type: field_type::COOKIE,
                body: &[1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                offset: 48
            })]
        );
    }

    #[test]
    fn authenticator_body_parses_with_padding() {
        let body = [0, 2, 0, 3, 9, 9, 0, 0, 7, 7, 7, 0, 0, 0, 0, 0];
        let a = Authenticator::decode(&body);
        assert_eq!(
            a,
            Some(Authenticator {
                nonce: &[9, 9],
                ciphertext: &[7, 7, 7]
            })
        );
        assert_eq!(Authenticator::decode(&body[..9]), None);
    }
}
