//! shelfboot QEMU lab: real kernels, emulated NAND, a bridged backplane.
