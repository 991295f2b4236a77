//! darts-bilevel
