//! Internet checksum arithmetic for incremental updates in XDP programs
//! (RFC 1624), where the kernel's checksum helpers are not available.

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), where `removed` is the sum of the
/// complemented old words and `added` the sum of the new ones.
#[inline(always)]
pub fn replace(check: [u8; 2], removed: u32, added: u32) -> u16 {
    !fold(!u16::from_be_bytes(check) as u32 + removed + added)
}

/// A checksum of zero means "none" in UDP; a computed zero is sent as all ones
/// (RFC 768), which is the same value in one's complement.
#[inline(always)]
pub fn udp_checksum(check: u16) -> [u8; 2] {
    if check == 0 { [0xff, 0xff] } else { check.to_be_bytes() }
}

/// Folds a 32-bit sum of 16-bit words into 16 bits with end-around carry.
/// Twice is enough for any u32: the first fold leaves at most 0x1fffe.
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// The sum of the big-endian 16-bit words of `bytes`.
#[inline(always)]
pub fn sum<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut total = 0u32;
    let mut i = 0;
    while i + 1 < N {
        total += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    total
}

/// The sum of the complemented big-endian 16-bit words of `bytes`.
#[inline(always)]
pub fn sum_not<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut total = 0u32;
    let mut i = 0;
    while i + 1 < N {
        total += !u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    total
}
