//! JSON written by hand where serde's and core::fmt's generic machinery cost more than
//! the rest of the work: the frame of every record (`v`, `seq`), a statement's outcome,
//! and witness checkpoints. A leaf module, so the schema ([`crate::event`]), the writer and
//! the witness can all use it without depending on each other.

/// Appends `n` in decimal.
// `inline`: every record's frame calls it from another module (`Writer::seal`), where it
// used to be inlined while both were in one file; measured with examples/append_cost.
#[inline]
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
