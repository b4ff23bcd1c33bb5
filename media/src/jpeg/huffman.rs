//! Huffman tables: a lookup on the next [`LOOKAHEAD`] bits for short codes (almost all of them),
//! libjpeg's canonical-code walk for the rest.

use std::sync::Arc;

use super::{JpegError, bits::Bits};

/// A DHT table as the file defines it: code counts per length and symbols, at most 272 bytes.
/// Parsing keeps only these; the ~25 KB of lookup tables are built when a scan that uses the
/// table is decoded ([`Tables`]), so a file of thousands of DHT segments costs no memory.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Definition {
    pub(super) counts: [u8; 16],
    pub(super) symbols: Vec<u8>,
}

/// Where slot `id` of a class is kept in [`Tables::slots`]: `None` past the four JPEG has.
fn slot(dc: bool, id: usize) -> Option<usize> {
    (id < 4).then(|| usize::from(!dc) * 4 + id)
}

/// The built tables a decode works with: one per slot JPEG defines (DC 0–3, AC 0–3), rebuilt
/// only when a scan uses a different definition for the slot than the previous scan did.
#[derive(Debug, Default)]
pub(super) struct Tables {
    slots: [Option<(Arc<Definition>, Huffman)>; 8],
}

impl Tables {
    /// Makes the table of slot `id` (0–3) that `defined` holds for a scan ready for
    /// [`Tables::get`]; an error when the scan names a slot with no table, or the table is bad.
    pub(super) fn prepare(
        &mut self,
        dc: bool,
        id: usize,
        defined: &[Option<Arc<Definition>>; 4],
    ) -> Result<(), JpegError> {
        let definition = defined
            .get(id)
            .and_then(Option::as_ref)
            .ok_or(JpegError::Corrupt("a scan uses an undefined Huffman table"))?;
        let slot =
            slot(dc, id).and_then(|i| self.slots.get_mut(i)).ok_or(JpegError::Corrupt("a bad Huffman table id"))?;
        if slot.as_ref().is_some_and(|(built, _)| Arc::ptr_eq(built, definition) || **built == **definition) {
            return Ok(());
        }
        let table = Huffman::new(&definition.counts, &definition.symbols, dc)?;
        *slot = Some((Arc::clone(definition), table));
        Ok(())
    }

    /// A table made ready by [`Tables::prepare`].
    pub(super) fn get(&self, dc: bool, id: usize) -> Result<&Huffman, JpegError> {
        slot(dc, id)
            .and_then(|i| self.slots[i].as_ref())
            .map(|(_, table)| table)
            .ok_or(JpegError::Corrupt("a scan uses an undefined Huffman table"))
    }
}

/// Bits looked at in one table lookup.
pub(super) const LOOKAHEAD: u32 = 10;
/// Bits looked at by the multi-symbol AC skipping table.
const RUN_BITS: u32 = 12;

/// One DHT table, ready for decoding DC differences and skipping AC coefficients.
#[derive(Debug)]
pub(super) struct Huffman {
    /// By the next [`LOOKAHEAD`] bits: `length << 8 | symbol`, or 0 for a longer code.
    fast: Box<[u16; 1 << LOOKAHEAD]>,
    /// By the next [`LOOKAHEAD`] bits, for AC use: `bits << 8 | advance`, the bits of the whole
    /// coefficient (code and value) and how far the zig-zag index moves (64 ends the block);
    /// 0 for a longer code.
    skip: Box<[u16; 1 << LOOKAHEAD]>,
    /// By the next [`RUN_BITS`] bits, for AC use: as many whole coefficients as fit, ending at
    /// the first end of block: `bits | advance << 8 | advance_before_last << 16`, or 0 when not
    /// even one fits. Skipping is a chain of dependent lookups, so covering two or three
    /// coefficients per lookup is most of the decoder's speed.
    run: Box<[u32; 1 << RUN_BITS]>,
    /// By the next [`LOOKAHEAD`] bits: `bits | difference << 16`, a whole DC difference (code
    /// and value) when it fits, or 0. For AC tables, `bits | advance << 8 | value << 16`: a
    /// whole coefficient with how far the zig-zag index moves (64: end of block).
    difference: Box<[u32; 1 << LOOKAHEAD]>,
    /// Largest code of each length (-1: none), and the offset from a code to its symbol index.
    max_code: [i32; 17],
    offset: [i32; 17],
    symbols: Vec<u8>,
}

impl Huffman {
    /// Builds a table from DHT counts and symbols, rejecting what libjpeg rejects (too many
    /// symbols, over-subscribed lengths, DC sizes over 15).
    pub(super) fn new(counts: &[u8; 16], symbols: &[u8], dc: bool) -> Result<Self, JpegError> {
        let bad = JpegError::Corrupt("a bad Huffman table");
        let total: usize = counts.iter().map(|&n| usize::from(n)).sum();
        if total != symbols.len() || total > 256 || (dc && symbols.iter().any(|&s| s > 15)) {
            return Err(bad);
        }
        // The codes of each length must fit in that many bits, leaving the all-ones code unused
        // (libjpeg's check); checked first, so that filling the lookup tables stays in bounds.
        let mut next = 0u32;
        for (length, &n) in (1..=16u32).zip(counts) {
            next += u32::from(n);
            if next >= 1 << length {
                return Err(bad);
            }
            next <<= 1;
        }
        let mut fast = Box::new([0u16; 1 << LOOKAHEAD]);
        let mut skip = Box::new([0u16; 1 << LOOKAHEAD]);
        let (mut max_code, mut offset) = ([-1i32; 17], [0i32; 17]);
        let (mut code, mut k) = (0u32, 0usize);
        for length in 1..=16u32 {
            let n = usize::from(counts[length as usize - 1]);
            offset[length as usize] = k as i32 - code as i32;
            for &symbol in &symbols[k..k + n] {
                if length <= LOOKAHEAD {
                    let spread = 1usize << (LOOKAHEAD - length);
                    let first = (code as usize) << (LOOKAHEAD - length);
                    fast[first..first + spread].fill((length << 8 | u32::from(symbol)) as u16);
                    let size = u32::from(symbol & 15);
                    skip[first..first + spread].fill(((length + size) << 8 | ac_advance(symbol)) as u16);
                }
                code += 1;
            }
            k += n;
            if n > 0 {
                max_code[length as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        // Only AC tables skip, only DC tables decode differences; the other table stays empty.
        let run = if dc { Box::new([0; 1 << RUN_BITS]) } else { runs(&fast, &max_code, &offset, symbols) };
        let mut difference = Box::new([0u32; 1 << LOOKAHEAD]);
        for (pattern, entry) in difference.iter_mut().enumerate() {
            let found = fast[pattern];
            let (length, size) = (u32::from(found >> 8), u32::from(found & 15));
            if found != 0 && length + size <= LOOKAHEAD {
                let value = ((pattern as u32 >> (LOOKAHEAD - length - size)) & ((1 << size) - 1)) as i32;
                let value = if size > 0 && value < 1 << (size - 1) { value - (1 << size) + 1 } else { value };
                let advance = if dc { 0 } else { ac_advance(found as u8) };
                *entry = (length + size) | advance << 8 | u32::from(value as i16 as u16) << 16;
            }
        }
        Ok(Huffman { fast, skip, run, difference, max_code, offset, symbols: symbols.to_vec() })
    }

    /// Decodes one symbol; needs 16 bits available.
    #[inline(always)]
    pub(super) fn decode(&self, bits: &mut Bits<'_>) -> Result<u8, JpegError> {
        let entry = self.fast[bits.peek(LOOKAHEAD) as usize];
        if entry != 0 {
            bits.consume(u32::from(entry >> 8));
            return Ok(entry as u8);
        }
        let (length, symbol) = self.decode_long(bits.peek(16))?;
        bits.consume(length);
        Ok(symbol)
    }

    /// Codes longer than the lookahead, by libjpeg's walk over lengths: the code's length and
    /// symbol, from the next 16 bits.
    #[cold]
    #[inline(never)]
    fn decode_long(&self, next16: u32) -> Result<(u32, u8), JpegError> {
        for length in LOOKAHEAD + 1..=16 {
            let code = (next16 >> (16 - length)) as i32;
            if code <= self.max_code[length as usize] {
                let symbol = usize::try_from(self.offset[length as usize] + code)
                    .ok()
                    .and_then(|i| self.symbols.get(i).copied())
                    .ok_or(JpegError::Corrupt("a bad Huffman code"))?;
                return Ok((length, symbol));
            }
        }
        Err(JpegError::Corrupt("a bad Huffman code"))
    }

    /// Decodes one DC difference (code and value); needs 31 bits available.
    #[inline(always)]
    pub(super) fn decode_difference(&self, bits: &mut Bits<'_>) -> Result<i32, JpegError> {
        let entry = self.difference[bits.peek(LOOKAHEAD) as usize];
        if entry != 0 {
            bits.consume(entry & 0xFF);
            return Ok(i32::from((entry >> 16) as u16 as i16));
        }
        let size = self.decode(bits)?;
        Ok(bits.receive_extend(u32::from(size)))
    }

    /// Skips the AC coefficients 1..=63 of one block of a sequential scan.
    #[inline(always)]
    pub(super) fn skip_block(&self, bits: &mut Bits<'_>) -> Result<(), JpegError> {
        let mut k = 1;
        while k < 64 {
            bits.ensure();
            let run = self.run[bits.peek(RUN_BITS) as usize];
            // Whole run, unless the block could end before its last coefficient.
            if run != 0 && k + (run >> 16) < 64 {
                bits.consume(run & 0xFF);
                k += (run >> 8) & 0xFF;
                continue;
            }
            let entry = self.skip[bits.peek(LOOKAHEAD) as usize];
            if entry != 0 {
                bits.consume(u32::from(entry >> 8));
                k += u32::from(entry & 0xFF);
            } else {
                let (length, symbol) = self.decode_long(bits.peek(16))?;
                bits.consume(length + u32::from(symbol & 15));
                k += ac_advance(symbol);
            }
        }
        Ok(())
    }
}

impl Huffman {
    /// Decodes the AC coefficients of one block of a sequential scan into `block` (natural
    /// order). Past position 63 (corrupt data) libjpeg writes to 63, and so does this.
    #[inline(always)]
    pub(super) fn decode_block(&self, bits: &mut Bits<'_>, block: &mut [i32; 64]) -> Result<(), JpegError> {
        let mut k = 1;
        while k < 64 {
            bits.ensure();
            let entry = self.difference[bits.peek(LOOKAHEAD) as usize];
            if entry != 0 {
                // A coefficient after `advance - 1` zeros; ZRL and end of block carry value 0,
                // written past every coefficient so far, so harmless.
                bits.consume(entry & 0xFF);
                let at = k + ((entry >> 8) & 0xFF) as usize - 1;
                block[super::ZIGZAG[at.min(63)]] = i32::from((entry >> 16) as u16 as i16);
                k = at + 1;
                continue;
            }
            let symbol = self.decode(bits)?;
            let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
            if size == 0 {
                if run != 15 {
                    break;
                }
                k += 16;
                continue;
            }
            k += run;
            block[super::ZIGZAG[k.min(63)]] = bits.receive_extend(size);
            k += 1;
        }
        Ok(())
    }
}

/// The multi-coefficient table of [`Huffman::run`]: for each [`RUN_BITS`]-bit pattern, the
/// coefficients (code and value bits) that fit in it whole, greedily, stopping after an end of
/// block.
fn runs(
    fast: &[u16; 1 << LOOKAHEAD],
    max_code: &[i32; 17],
    offset: &[i32; 17],
    symbols: &[u8],
) -> Box<[u32; 1 << RUN_BITS]> {
    // The code at the top of `bits` (left-aligned in RUN_BITS), if it is at most `room` long:
    // from the single-symbol table, or by libjpeg's walk for the longer ones.
    let code_at = |bits: u32, room: u32| -> Option<(u32, u8)> {
        let entry = fast[(bits >> (RUN_BITS - LOOKAHEAD)) as usize];
        let (length, symbol) = if entry != 0 {
            (u32::from(entry >> 8), entry as u8)
        } else {
            (LOOKAHEAD + 1..=RUN_BITS).find_map(|length| {
                let code = (bits >> (RUN_BITS - length)) as i32;
                (code <= max_code[length as usize])
                    .then(|| usize::try_from(offset[length as usize] + code).ok().and_then(|i| symbols.get(i)))
                    .flatten()
                    .map(|&symbol| (length, symbol))
            })?
        };
        (length <= room).then_some((length, symbol))
    };
    let mut table = Box::new([0u32; 1 << RUN_BITS]);
    for (pattern, entry) in table.iter_mut().enumerate() {
        let (mut used, mut advance, mut before_last) = (0u32, 0u32, 0u32);
        while used < RUN_BITS {
            let rest = ((pattern as u32) << used) & ((1 << RUN_BITS) - 1);
            let Some((length, symbol)) = code_at(rest, RUN_BITS - used) else { break };
            let bits = length + u32::from(symbol & 15);
            if used + bits > RUN_BITS {
                break;
            }
            used += bits;
            before_last = advance;
            advance += ac_advance(symbol);
            if ac_advance(symbol) == 64 {
                break;
            }
        }
        if used > 0 {
            *entry = used | advance << 8 | before_last << 16;
        }
    }
    table
}

/// How far an AC symbol (run << 4 | size) moves the zig-zag index; libjpeg treats every
/// zero-size symbol but ZRL (0xF0, sixteen zeros) as end of block.
fn ac_advance(symbol: u8) -> u32 {
    match (symbol >> 4, symbol & 15) {
        (15, 0) => 16,
        (_, 0) => 64,
        (run, _) => u32::from(run) + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_short_and_long_codes() {
        // Lengths: one code of 1 bit ("0" → 5), one of 12 bits ("100000000000" → 7).
        let mut counts = [0u8; 16];
        counts[0] = 1;
        counts[11] = 1;
        let table = Huffman::new(&counts, &[5, 7], true).expect("valid");
        let data = [0b0100_0000, 0b0000_0000, 0, 0, 0, 0];
        let mut bits = Bits::new(&data);
        bits.ensure();
        assert_eq!(table.decode(&mut bits).expect("short"), 5);
        assert_eq!(table.decode(&mut bits).expect("long"), 7);
        let ones = [0xFF, 0x00, 0xFF, 0x00, 0, 0];
        let mut bits = Bits::new(&ones);
        bits.ensure();
        assert!(table.decode(&mut bits).is_err(), "an all-ones prefix is no code");
    }

    #[test]
    fn rejects_over_subscribed_tables_and_large_dc_sizes() {
        let mut counts = [0u8; 16];
        counts[0] = 2;
        assert!(Huffman::new(&counts, &[0, 1], false).is_err(), "two 1-bit codes leave no room");
        counts[0] = 1;
        assert!(Huffman::new(&counts, &[16], true).is_err());
        assert!(Huffman::new(&counts, &[16], false).is_ok());
    }

    #[test]
    fn ac_symbols_advance_like_libjpeg() {
        assert_eq!(ac_advance(0x00), 64);
        assert_eq!(ac_advance(0xF0), 16);
        assert_eq!(ac_advance(0x32), 4);
        assert_eq!(ac_advance(0x10), 64, "an invalid zero-size run ends the block, as in libjpeg");
    }
}
