//! darts-ops
