//! The web console served by `neocloud serve` at `/`.
