//! The entropy-coded bit stream: big-endian bits, `0xFF 0x00` stuffing, ending at a marker.

use super::JpegError;

/// A reader over one scan's entropy-coded data. Decoders keep it in a local and every hot
/// method is inlined, so its fields live in registers; the rare slow paths take and return it
/// by value for the same reason (a `&mut` to a non-inlined function would pin it to memory).
#[derive(Debug, Clone, Copy)]
pub(super) struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    /// Unread bits, most significant first.
    acc: u64,
    /// How many bits of `acc` are valid.
    count: u32,
    /// Zero bits fed in past a marker or the end of the data, as libjpeg does; reading into them
    /// means the data was truncated or corrupt.
    padding: u32,
    /// A marker was reached (`pos` is at its `0xFF`), or the end of the data.
    at_marker: bool,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Bits { data, pos: 0, acc: 0, count: 0, padding: 0, at_marker: false }
    }

    /// Makes at least 32 bits available: enough for one Huffman code and its value bits.
    /// Tops the buffer up to at least 57 bits: eight bytes at once when none of them is `0xFF`
    /// (the common case), byte by byte around stuffing and markers.
    #[inline(always)]
    pub(super) fn ensure(&mut self) {
        if self.count >= 32 {
            return;
        }
        if !self.at_marker
            && let Some(&chunk) = self.data.get(self.pos..self.pos + 8).and_then(|c| <&[u8; 8]>::try_from(c).ok())
        {
            let word = u64::from_be_bytes(chunk);
            // Bytes up to the first 0xFF (stuffing or a marker) need no care.
            let take = ((64 - self.count) / 8).min(first_ff_byte(word));
            if take > 0 {
                self.acc |= (word >> (64 - 8 * take)) << (64 - self.count - 8 * take);
                self.count += 8 * take;
                self.pos += take as usize;
                if self.count >= 32 {
                    return;
                }
            }
        }
        *self = self.refilled_bytewise();
    }

    #[cold]
    #[inline(never)]
    fn refilled_bytewise(mut self) -> Self {
        while self.count <= 56 {
            let byte = self.next_byte();
            self.acc |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
        self
    }

    fn next_byte(&mut self) -> u8 {
        if !self.at_marker {
            match self.data.get(self.pos) {
                Some(0xFF) if self.data.get(self.pos + 1) == Some(&0x00) => {
                    self.pos += 2;
                    return 0xFF;
                }
                Some(0xFF) | None => self.at_marker = true,
                Some(&byte) => {
                    self.pos += 1;
                    return byte;
                }
            }
        }
        self.padding += 8;
        0
    }

    /// The next `n` bits (1 to 32) without consuming them.
    #[inline(always)]
    pub(super) fn peek(&self, n: u32) -> u32 {
        (self.acc >> (64 - n)) as u32
    }

    /// Drops `n` bits (fewer than were made available by [`Bits::ensure`]).
    #[inline(always)]
    pub(super) fn consume(&mut self, n: u32) {
        self.acc <<= n;
        self.count -= n;
    }

    /// Reads `n` bits (0 to 16) as an unsigned number.
    #[inline(always)]
    pub(super) fn take(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let value = self.peek(n);
        self.consume(n);
        value
    }

    /// Reads a coefficient of `size` bits (0 to 15): JPEG's sign-by-leading-bit encoding.
    #[inline(always)]
    pub(super) fn receive_extend(&mut self, size: u32) -> i32 {
        let value = self.take(size) as i32;
        if size > 0 && value < 1 << (size - 1) { value - (1 << size) + 1 } else { value }
    }

    /// Fails when decoding has read past the end of the data (libjpeg's "premature end of data
    /// segment", which TurboJPEG reports as an error).
    #[inline(always)]
    pub(super) fn check_not_truncated(&self) -> Result<(), JpegError> {
        if self.padding > self.count {
            return Err(JpegError::Corrupt("the scan ends early (truncated or corrupt data)"));
        }
        Ok(())
    }

    /// The reader past restart marker `RSTn` (`n` = `expected`): only the padding of the last
    /// byte may be left unread before it. The caller resets its DC predictions.
    #[inline(never)]
    pub(super) fn restarted(self, expected: u8) -> Result<Self, JpegError> {
        self.check_not_truncated()?;
        if self.count - self.padding >= 8 {
            return Err(JpegError::Corrupt("data left over before a restart marker"));
        }
        match self.data.get(self.pos..self.pos + 2) {
            Some(&[0xFF, marker]) if marker == 0xD0 + expected => {}
            _ => return Err(JpegError::Corrupt("a missing or out-of-order restart marker")),
        }
        Ok(Bits::new(&self.data[self.pos + 2..]))
    }
}

/// Index (0 = most significant) of the first `0xFF` byte of `word`, 8 when there is none: the
/// first zero byte of `!word`, by the classic bit trick (exact for the first one; borrows can
/// only flag bytes after it).
fn first_ff_byte(word: u64) -> u32 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    ((!word).wrapping_sub(ONES) & word & HIGHS).leading_zeros() / 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_ff_byte_of_a_word() {
        assert_eq!(first_ff_byte(0x0001_02FE_7F80_FE00), 8);
        for i in 0..8 {
            assert_eq!(first_ff_byte(0xFF << (8 * (7 - i))), i, "byte {i}");
            assert_eq!(first_ff_byte((0xFF << (8 * (7 - i))) | 0xFF), i, "byte {i} and the last");
        }
        assert_eq!(first_ff_byte(0x00FF_FF00_0000_0000), 1);
    }

    #[test]
    fn unstuffs_and_pads_at_a_marker() {
        let data = [0b1010_0000, 0xFF, 0x00, 0x12, 0xFF, 0xD0, 0x77];
        let mut bits = Bits::new(&data);
        bits.ensure();
        assert_eq!(bits.take(4), 0b1010);
        assert_eq!(bits.take(4), 0);
        assert_eq!(bits.take(8), 0xFF, "0xFF 0x00 is a stuffed 0xFF");
        assert_eq!(bits.take(8), 0x12);
        assert!(bits.check_not_truncated().is_ok());
        let mut bits = bits.restarted(0).expect("RST0 follows");
        bits.ensure();
        assert_eq!(bits.take(8), 0x77);
        bits.ensure();
        assert_eq!(bits.take(8), 0, "zeros past the end");
        assert!(bits.check_not_truncated().is_err());
    }

    #[test]
    fn extends_signed_values() {
        let data = [0b0111_0000, 0, 0, 0];
        let mut bits = Bits::new(&data);
        bits.ensure();
        assert_eq!(bits.receive_extend(3), -4, "011 in three bits is -4");
        assert_eq!(bits.receive_extend(1), 1);
        assert_eq!(bits.receive_extend(0), 0);
    }
}
