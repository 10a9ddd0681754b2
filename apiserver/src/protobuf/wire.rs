//! Protocol buffers wire format: a reader over one message's bytes yielding
//! `(field number, value)` pairs.

use super::ProtobufError;

/// One field occurrence on the wire.
#[derive(Debug, Clone, Copy)]
pub(super) enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    /// A 32-bit value; no Kubernetes field uses one, so only its presence is kept.
    Fixed32,
    Len(&'a [u8]),
}

impl WireValue<'_> {
    pub(super) fn wire_name(&self) -> &'static str {
        match self {
            WireValue::Varint(_) => "varint",
            WireValue::Fixed64(_) => "64-bit",
            WireValue::Fixed32 => "32-bit",
            WireValue::Len(_) => "length-delimited",
        }
    }
}

/// Iterates over the fields of a message.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(super) fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or(ProtobufError::Truncated)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::BadVarint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtobufError> {
        let end = self.pos.checked_add(n).ok_or(ProtobufError::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(ProtobufError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    /// The next field, or `None` at the end of the message. Groups (wire types 3 and 4,
    /// unused by Kubernetes) are rejected.
    pub(super) fn next_field(&mut self) -> Result<Option<(u32, WireValue<'a>)>, ProtobufError> {
        if self.at_end() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| ProtobufError::BadTag(key >> 3))?;
        if tag == 0 {
            return Err(ProtobufError::BadTag(0));
        }
        let value = match key & 7 {
            0 => WireValue::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                WireValue::Fixed64(u64::from_le_bytes(a))
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| ProtobufError::Truncated)?;
                WireValue::Len(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                WireValue::Fixed32
            }
            other => return Err(ProtobufError::UnsupportedWireType { tag, wire_type: other as u8 }),
        };
        Ok(Some((tag, value)))
    }
}
