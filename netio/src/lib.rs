//! shelfboot backplane I/O: AF_PACKET endpoints with batched send/receive paths, and network-namespace test fixtures.
