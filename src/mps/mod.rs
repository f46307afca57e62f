//! CUDA MPS control daemon lifecycle.
