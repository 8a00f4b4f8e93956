//! shelfboot cross-crate tests: network-namespace and QEMU tiers.
