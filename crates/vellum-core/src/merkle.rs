//! RFC 9162 Merkle tree hashing and proofs. (Being written by a helper.)
