//! Just enough of a BTF reader to find struct member offsets in the kernel's own BTF
//! (`/sys/kernel/btf/vmlinux`), for the `file_open` LSM variant, which follows
//! `file->f_inode->i_sb->s_dev` with `bpf_probe_read_kernel` (aya-ebpf has no CO-RE).

use anyhow::{bail, Context, Result};

/// Parsed type section of a BTF blob.
pub struct Btf {
    data: Vec<u8>,
    str_off: usize,
    str_len: usize,
    /// Byte offset of each type's record, by type id (id 0 is `void`).
    types: Vec<usize>,
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

impl Btf {
    /// Parses a BTF blob (little-endian only).
    pub fn parse(data: Vec<u8>) -> Result<Btf> {
        let rd = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                data.get(o..o + 4).context("BTF truncated")?.try_into()?,
            ))
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            bail!("not little-endian BTF");
        }
        let hdr_len = rd(4)? as usize;
        let (type_off, type_len) = (rd(8)? as usize, rd(12)? as usize);
        let (str_off, str_len) = (hdr_len + rd(16)? as usize, rd(20)? as usize);
        let (mut o, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        if end > data.len() || str_off + str_len > data.len() {
            bail!("BTF sections out of bounds");
        }
        let mut types = vec![0];
        while o + 12 <= end {
            types.push(o);
            let info = rd(o + 4)?;
            let (vlen, kind) = ((info & 0xffff) as usize, (info >> 24) & 0x1f);
            let extra = match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0,
                k => bail!("unknown BTF kind {k}"),
            };
            o += 12 + extra;
        }
        Ok(Btf {
            data,
            str_off,
            str_len,
            types,
        })
    }

    fn u32_at(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.data[o..o + 4].try_into().expect("4 bytes"))
    }

    fn name(&self, off: u32) -> &str {
        let off = off as usize;
        if off >= self.str_len {
            return "";
        }
        let s = &self.data[self.str_off + off..self.str_off + self.str_len];
        let n = s.iter().position(|b| *b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..n]).unwrap_or("")
    }

    /// Byte offset of `member` in `struct sname`, looking into anonymous structs and unions.
    pub fn member_offset(&self, sname: &str, member: &str) -> Option<u64> {
        self.types.iter().skip(1).find_map(|&o| {
            let info = self.u32_at(o + 4);
            let (vlen, kind) = (info & 0xffff, (info >> 24) & 0x1f);
            (kind == KIND_STRUCT && vlen > 0 && self.name(self.u32_at(o)) == sname)
                .then(|| self.find_in(o, member, 0))
                .flatten()
        })
    }

    fn find_in(&self, o: usize, member: &str, depth: u32) -> Option<u64> {
        let info = self.u32_at(o + 4);
        let (vlen, kflag) = ((info & 0xffff) as usize, info >> 31 != 0);
        for i in 0..vlen {
            let m = o + 12 + 12 * i;
            let (name, ty, off) = (self.u32_at(m), self.u32_at(m + 4), self.u32_at(m + 8));
            let bits = if kflag { off & 0x00ff_ffff } else { off } as u64;
            if !bits.is_multiple_of(8) {
                continue; // a bitfield
            }
            if name != 0 && self.name(name) == member {
                return Some(bits / 8);
            }
            if name == 0 && depth < 4 {
                if let Some(&to) = self.types.get(ty as usize) {
                    let k = (self.u32_at(to + 4) >> 24) & 0x1f;
                    if k == KIND_STRUCT || k == KIND_UNION {
                        if let Some(x) = self.find_in(to, member, depth + 1) {
                            return Some(bits / 8 + x);
                        }
                    }
                }
            }
        }
        None
    }
}

/// The offsets `file_open` needs: `file.f_inode`, `inode.i_sb`, `super_block.s_dev`.
pub fn file_open_offsets(btf: &Btf) -> Option<[u64; 3]> {
    Some([
        btf.member_offset("file", "f_inode")?,
        btf.member_offset("inode", "i_sb")?,
        btf.member_offset("super_block", "s_dev")?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_offsets_in_the_running_kernel() {
        let Ok(data) = std::fs::read(crate::bpf::env::VMLINUX_BTF) else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        let btf = Btf::parse(data).expect("parse vmlinux BTF");
        let [a, b, c] = file_open_offsets(&btf).expect("offsets");
        assert!(a > 0 && b > 0 && c > 0, "{a} {b} {c}");
        assert_eq!(btf.member_offset("list_head", "next"), Some(0));
        assert_eq!(btf.member_offset("list_head", "prev"), Some(8));
    }
}
