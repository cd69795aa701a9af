//! The 48-byte NTPv4 header (RFC 5905, section 7.3).

use crate::reader::{BufferTooSmall, Reader, Writer};
use crate::time::{NtpShort, NtpTimestamp};

pub const HEADER_LEN: usize = 48;

/// Leap indicator values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leap {
    NoWarning = 0,
    InsertSecond = 1,
    DeleteSecond = 2,
    /// Clock unsynchronised (alarm).
    Unsynchronized = 3,
}

impl Leap {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Leap::NoWarning,
            1 => Leap::InsertSecond,
            2 => Leap::DeleteSecond,
            _ => Leap::Unsynchronized,
        }
    }
}

/// Association modes used here; everything else is carried as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Client,
    Server,
    Other(u8),
}

impl Mode {
    fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            3 => Mode::Client,
            4 => Mode::Server,
            m => Mode::Other(m),
        }
    }

    fn bits(self) -> u8 {
        match self {
            Mode::Client => 3,
            Mode::Server => 4,
            Mode::Other(m) => m & 7,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtpHeader {
    pub leap: Leap,
    pub version: u8,
    pub mode: Mode,
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    pub root_delay: NtpShort,
    pub root_dispersion: NtpShort,
    pub reference_id: [u8; 4],
    pub reference_time: NtpTimestamp,
    pub origin: NtpTimestamp,
    pub receive: NtpTimestamp,
    pub transmit: NtpTimestamp,
}

impl NtpHeader {
    /// A client request (version 4, mode 3) carrying only a transmit timestamp,
    /// as RFC 9109 recommends for client privacy.
    pub fn client_request(transmit: NtpTimestamp) -> Self {
        Self {
            leap: Leap::NoWarning,
            version: 4,
            mode: Mode::Client,
            stratum: 0,
            poll: 0,
            precision: 0,
            root_delay: NtpShort(0),
            root_dispersion: NtpShort(0),
            reference_id: [0; 4],
            reference_time: NtpTimestamp(0),
            origin: NtpTimestamp(0),
            receive: NtpTimestamp(0),
            transmit,
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Option<Self> {
        let first = r.u8()?;
        Some(Self {
            leap: Leap::from_bits(first >> 6),
            version: (first >> 3) & 7,
            mode: Mode::from_bits(first),
            stratum: r.u8()?,
            poll: r.u8()? as i8,
            precision: r.u8()? as i8,
            root_delay: NtpShort(r.u32()?),
            root_dispersion: NtpShort(r.u32()?),
            reference_id: r.array()?,
            reference_time: NtpTimestamp(r.u64()?),
            origin: NtpTimestamp(r.u64()?),
            receive: NtpTimestamp(r.u64()?),
            transmit: NtpTimestamp(r.u64()?),
        })
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), BufferTooSmall> {
        let out: &mut [u8; HEADER_LEN] = w
            .reserve(HEADER_LEN)?
            .try_into()
            .map_err(|_| BufferTooSmall)?;
        *out = self.to_bytes();
        Ok(())
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        let [first, stratum, poll, precision, rest @ ..] = &mut b;
        *first = ((self.leap as u8) << 6) | ((self.version & 7) << 3) | self.mode.bits();
        *stratum = self.stratum;
        *poll = self.poll as u8;
        *precision = self.precision as u8;
        let (delay, dispersion) = (
            self.root_delay.0.to_be_bytes(),
            self.root_dispersion.0.to_be_bytes(),
        );
        let fields = [
            delay.as_slice(),
            &dispersion,
            &self.reference_id,
            &self.reference_time.0.to_be_bytes(),
            &self.origin.0.to_be_bytes(),
            &self.receive.0.to_be_bytes(),
            &self.transmit.0.to_be_bytes(),
        ];
        let mut at = 0;
        for f in fields {
            if let Some(dst) = rest.get_mut(at..at + f.len()) {
                dst.copy_from_slice(f);
            }
            at += f.len();
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_known_bytes() {
        let h = NtpHeader {
            leap: Leap::Unsynchronized,
            version: 4,
            mode: Mode::Server,
            stratum: 2,
            poll: 6,
            precision: -20,
            root_delay: NtpShort(0x0000_0102),
            root_dispersion: NtpShort(0x0000_0304),
            reference_id: *b"GPS\0",
            reference_time: NtpTimestamp(0x1111_1111_2222_2222),
            origin: NtpTimestamp(0x3333_3333_4444_4444),
            receive: NtpTimestamp(0x5555_5555_6666_6666),
            transmit: NtpTimestamp(0x7777_7777_8888_8888),
        };
        let expected = hex::decode(concat!(
            "e40206ec",
            "00000102",
            "00000304",
            "47505300",
            "1111111122222222",
            "3333333344444444",
            "5555555566666666",
            "7777777788888888"
        ))
        .unwrap_or_default();
        assert_eq!(h.to_bytes().as_slice(), expected.as_slice());
        assert_eq!(NtpHeader::decode(&mut Reader::new(&expected)), Some(h));
    }

    #[test]
    fn short_header_is_rejected() {
        assert_eq!(NtpHeader::decode(&mut Reader::new(&[0x23; 47])), None);
    }
}
