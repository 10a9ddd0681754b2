//! A runtime with no processes (being written).
