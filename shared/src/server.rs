//! tms serve (in progress)
