//! shelfboot init: the static PID 1 of a line card's initramfs.
