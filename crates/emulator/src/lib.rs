//! Local emulator of the LINE WORKS, Zoom and Qlara APIs for tests, demos and benchmarks.
