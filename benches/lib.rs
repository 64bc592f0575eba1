//! Helpers shared by the benchmarks (being built).
