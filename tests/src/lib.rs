//! End-to-end test support: spawning real `atmosphere` processes, loopback helpers.
