//! Fast prompt decoding for byte-level BPE tokenizers: a table of each token's bytes, so a
//! 10k-token prompt decodes at memcpy speed instead of through the tokenizers pipeline (the
//! scripted server decodes every prompt whole). Built only when every token maps to bytes and the
//! table agrees with the tokenizer's own decoding; otherwise the tokenizer decodes.

use asearcher_tokenizer::Tokenizer;

/// GPT-2's byte <-> printable character map, inverted: character -> byte.
fn byte_of_char() -> std::collections::HashMap<char, u8> {
    let mut map = std::collections::HashMap::new();
    let mut extra = 0u32;
    for b in 0u32..=255 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        if let Some(c) = char::from_u32(c) {
            map.insert(c, b as u8);
        }
    }
    map
}

/// Each token id's bytes.
pub struct ByteTable {
    bytes: Vec<Vec<u8>>,
}

impl ByteTable {
    /// The table, if `tok` is byte-level and the table decodes exactly as `tok` does.
    pub fn build(tok: &Tokenizer) -> Option<Self> {
        let map = byte_of_char();
        let bytes: Vec<Vec<u8>> = (0..tok.vocab_size() as u32)
            .map(|id| {
                tok.id_to_token(id)?
                    .chars()
                    .map(|c| map.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
            })
            .collect::<Option<_>>()?;
        let table = ByteTable { bytes };
        table.agrees_with(tok).then_some(table)
    }

    /// Every id (in chunks of 256, one tokenizer call each) and a probe text decode the same
    /// through the table as through the tokenizer.
    fn agrees_with(&self, tok: &Tokenizer) -> bool {
        let ids: Vec<u32> = (0..self.bytes.len() as u32).collect();
        let single = ids
            .chunks(256)
            .all(|chunk| tok.decode(chunk, false).ok() == self.decode(chunk));
        let probe =
            "Question: Ünïcödé 中文 café?\n\t<information>[Doc 1](u):\n\"T\"</information> 42.";
        single
            && tok
                .encode(probe, false)
                .is_ok_and(|ids| self.decode(&ids).as_deref() == Some(probe))
    }

    /// The text of `ids` (invalid UTF-8 replaced), or `None` if an id is out of the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Option<String> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.bytes.get(id as usize)?);
        }
        Some(
            String::from_utf8(out)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_tokenizer_gets_a_table_that_decodes_like_it() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../python/asearcher/data/sample_tokenizer"
        );
        let tok = Tokenizer::from_dir(dir).unwrap();
        let table = ByteTable::build(&tok).expect("byte-level tokenizer");
        let text =
            "<|im_start|>user\nQuestion: Wo liegt Köln?<|im_end|>\n<information>x</information>";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(
            table.decode(&ids).unwrap(),
            tok.decode(&ids, false).unwrap()
        );
        assert_eq!(table.decode(&[u32::MAX]), None);
    }
}
