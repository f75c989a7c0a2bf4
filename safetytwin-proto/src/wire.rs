//! The generated messages as bytes, for the crates that store, queue or send them: what a
//! message weighs on the wire and its encoding and decoding, without naming prost. With
//! `convert` and `cost`, the only modules that know prost.

/// A wire message that cannot be decoded. Its text is prost's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct DecodeError(#[from] prost::DecodeError);

/// A message of the `safetytwin.v1` protocol as bytes.
///
/// Implemented for every generated message; the names differ from prost's so that both traits
/// can be in scope here.
pub trait Wire: Sized {
    /// Its encoded size in bytes.
    fn wire_len(&self) -> usize;

    /// Its size as an entry of a repeated field in its parent: tag (one byte, field numbers
    /// below 16), length and the message.
    fn entry_len(&self) -> usize {
        entry_len(self.wire_len())
    }

    /// Its encoding.
    fn to_bytes(&self) -> Vec<u8>;

    /// Decodes one message from all of `bytes`.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError>;
}

impl<T: prost::Message + Default> Wire for T {
    fn wire_len(&self) -> usize {
        self.encoded_len()
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(T::decode(bytes)?)
    }
}

/// What an entry of `len` encoded bytes adds to its parent: tag (one byte), length, bytes.
pub fn entry_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    #[test]
    fn a_message_round_trips_and_weighs_what_it_encodes_to() {
        let file = v1::NamedFile {
            path: "/etc/hosts".into(),
            state: None,
        };
        let bytes = file.to_bytes();
        assert_eq!(bytes.len(), file.wire_len());
        assert_eq!(file.entry_len(), 2 + bytes.len());
        assert_eq!(v1::NamedFile::from_bytes(&bytes), Ok(file));
        let err = v1::NamedFile::from_bytes(&[0x0a, 0x05]).unwrap_err();
        assert!(err.to_string().contains("failed to decode"), "{err}");
    }
}
