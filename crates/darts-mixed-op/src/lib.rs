//! darts-mixed-op
