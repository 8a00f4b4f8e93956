//! shelfboot benchmarks: shelfboot against TFTP, HTTP, udpcast and uftp on one namespace backplane.
