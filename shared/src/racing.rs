//! The fallback/racing policy as a sans-IO state machine.
//! STUB: being written.
