//! `gru.v1.Matrix`, encoded and decoded by hand.
//!
//! The wire format is exactly what the .proto says (`rows = 1`, `cols = 2`,
//! `repeated float values = 3`, packed as proto3 does by default), so every
//! client, grpcurl and reflection see the generated schema. What differs is
//! speed: prost moves a packed float field one `f32` at a time through the
//! `Buf`/`BufMut` traits, and at 256 sessions × 32 steps per message that
//! was a quarter of both cores' time (client decode, server encode; perf,
//! BENCHMARKS.md). Here the floats go through in bulk copies.
//!
//! build.rs maps the proto type here with `extern_path`; `pb::Matrix` is
//! re-exported, so the rest of the code is unchanged.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// A dense row-major float32 matrix.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Matrix {
    pub rows: u32,
    pub cols: u32,
    pub values: Vec<f32>,
}

const VALUES: u32 = 3;

impl prost::Message for Matrix {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.rows != 0 {
            encoding::uint32::encode(1, &self.rows, buf);
        }
        if self.cols != 0 {
            encoding::uint32::encode(2, &self.cols, buf);
        }
        if !self.values.is_empty() {
            encoding::encode_key(VALUES, WireType::LengthDelimited, buf);
            encoding::encode_varint(self.values.len() as u64 * 4, buf);
            put_f32s(&self.values, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::uint32::merge(wire_type, &mut self.rows, buf, ctx),
            2 => encoding::uint32::merge(wire_type, &mut self.cols, buf, ctx),
            VALUES if wire_type == WireType::LengthDelimited => {
                let len = encoding::decode_varint(buf)?;
                if len > buf.remaining() as u64 {
                    return Err(decode_error("Matrix.values: buffer underflow"));
                }
                if len % 4 != 0 {
                    return Err(decode_error(
                        "Matrix.values: packed length is not a multiple of 4",
                    ));
                }
                get_f32s(&mut self.values, len as usize, buf);
                Ok(())
            }
            // A writer may send the floats unpacked, one key each: accepted
            // as proto3 requires.
            VALUES => encoding::float::merge_repeated(wire_type, &mut self.values, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        (if self.rows != 0 {
            encoding::uint32::encoded_len(1, &self.rows)
        } else {
            0
        }) + (if self.cols != 0 {
            encoding::uint32::encoded_len(2, &self.cols)
        } else {
            0
        }) + encoding::float::encoded_len_packed(VALUES, &self.values)
    }

    fn clear(&mut self) {
        self.rows = 0;
        self.cols = 0;
        self.values.clear();
    }
}

/// prost marks its only public constructor deprecated (meant for its own
/// generated code, which is what this file replaces); pinned to prost 0.14.
#[allow(deprecated)]
pub(crate) fn decode_error(msg: &'static str) -> DecodeError {
    DecodeError::new(msg)
}

/// Little-endian floats, a block at a time (the per-value loop compiles to
/// plain vector moves; `put_slice` is one bounds check per block).
pub(crate) fn put_f32s(values: &[f32], buf: &mut impl BufMut) {
    const BLOCK: usize = 1024;
    let mut tmp = [0u8; BLOCK * 4];
    for block in values.chunks(BLOCK) {
        for (d, v) in tmp.chunks_exact_mut(4).zip(block) {
            d.copy_from_slice(&v.to_le_bytes());
        }
        buf.put_slice(&tmp[..block.len() * 4]);
    }
}

/// Appends `len / 4` little-endian floats from `buf` (len checked by the
/// caller), copying whole contiguous chunks; a float split across two
/// chunks is read on its own.
fn get_f32s(values: &mut Vec<f32>, len: usize, buf: &mut impl Buf) {
    values.reserve(len / 4);
    let mut left = len;
    while left > 0 {
        let chunk = buf.chunk();
        let n = chunk.len().min(left) / 4 * 4;
        if n == 0 {
            values.push(buf.get_f32_le());
            left -= 4;
            continue;
        }
        values.extend(
            chunk[..n]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        buf.advance(n);
        left -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The generated type prost would have made, as the reference codec.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(uint32, tag = "1")]
        rows: u32,
        #[prost(uint32, tag = "2")]
        cols: u32,
        #[prost(float, repeated, tag = "3")]
        values: Vec<f32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Unpacked {
        #[prost(uint32, tag = "1")]
        rows: u32,
        #[prost(float, repeated, packed = "false", tag = "3")]
        values: Vec<f32>,
        #[prost(string, tag = "9")]
        unknown: String,
    }

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37).sin() * 1e3 + f32::EPSILON * i as f32)
            .collect()
    }

    #[test]
    fn bytes_match_prost_both_ways() {
        for (rows, cols, n) in [(0, 0, 0), (1, 3, 3), (32, 256, 8192), (7, 0, 5000)] {
            let ours = Matrix {
                rows,
                cols,
                values: sample(n),
            };
            let gen = Generated {
                rows,
                cols,
                values: ours.values.clone(),
            };
            let bytes = ours.encode_to_vec();
            assert_eq!(bytes, gen.encode_to_vec(), "{rows}x{cols}, {n} values");
            assert_eq!(ours.encoded_len(), bytes.len());
            assert_eq!(Matrix::decode(&bytes[..]).unwrap(), ours);
            assert_eq!(Generated::decode(&bytes[..]).unwrap(), gen);
        }
    }

    /// A `Buf` made of separate pieces, like a body that arrived in frames.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl Buf for Pieces {
        fn remaining(&self) -> usize {
            self.0.iter().map(Vec::len).sum()
        }
        fn chunk(&self) -> &[u8] {
            self.0.front().map_or(&[], |p| &p[..])
        }
        fn advance(&mut self, mut n: usize) {
            while n > 0 {
                let front = self.0.front_mut().expect("advance past the end");
                if n < front.len() {
                    front.drain(..n);
                    return;
                }
                n -= front.len();
                self.0.pop_front();
            }
        }
    }

    #[test]
    fn decodes_across_chunk_boundaries() {
        // Pieces that cut floats in the middle.
        let m = Matrix {
            rows: 3,
            cols: 1001,
            values: sample(3003),
        };
        let bytes = m.encode_to_vec();
        for cut in [1usize, 3, 5, 4097] {
            let mut buf = Pieces(bytes.chunks(cut).map(<[u8]>::to_vec).collect());
            let got = Matrix::decode(&mut buf).unwrap();
            assert_eq!(got, m, "pieces of {cut} bytes");
        }
    }

    #[test]
    fn accepts_unpacked_floats_and_skips_unknown_fields() {
        let u = Unpacked {
            rows: 2,
            values: vec![1.5, -2.0, 3.25],
            unknown: "x".into(),
        };
        let got = Matrix::decode(&u.encode_to_vec()[..]).unwrap();
        assert_eq!(got.rows, 2);
        assert_eq!(got.values, vec![1.5, -2.0, 3.25]);
    }

    #[test]
    fn refuses_truncated_and_misaligned_values() {
        let bytes = Matrix {
            rows: 1,
            cols: 4,
            values: vec![1.0, 2.0, 3.0, 4.0],
        }
        .encode_to_vec();
        assert!(Matrix::decode(&bytes[..bytes.len() - 1]).is_err());
        // Field 3, length 6: not a whole number of floats.
        let bad = [0x1a, 6, 0, 0, 128, 63, 0, 0];
        assert!(Matrix::decode(&bad[..]).is_err());
    }
}
