package netpoll

// Waker is what the Poller wakes when its socket becomes readable or is
// closed. Wake must not block.
type Waker interface{ Wake() }
