//! Copy buffers, lent only while bytes are in flight. Connections take one
//! when a read finds data and give it back as soon as it is empty, so an
//! idle connection holds none; each runtime thread keeps a few spare ones
//! so that a busy connection does not allocate per message.

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of every buffer: large reads keep bulk transfers to few syscalls.
pub const SIZE: usize = 256 * 1024;
/// Spare buffers kept per thread.
const SPARES: usize = 2;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for `SIZE` bytes.
pub fn take() -> BytesMut {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Returns a buffer (its contents are dropped). Keeps it as a spare when
/// there is room, else frees it. Callers never `advance` a buffer, so its
/// capacity is still `SIZE`.
pub fn give(mut buf: BytesMut) {
    buf.clear();
    if buf.capacity() < SIZE {
        return;
    }
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARES {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_lent_again_empty() {
        let mut buf = take();
        let at = buf.as_ptr();
        buf.extend_from_slice(&[1; 1000]);
        give(buf);
        let again = take();
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
        assert!(again.capacity() >= SIZE);
    }
}
