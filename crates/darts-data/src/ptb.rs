//! Penn Treebank, word level (Mikolov's `ptb.train.txt` / `ptb.valid.txt` / `ptb.test.txt`), as
//! the recurrent DARTS search and evaluation read it (reference `rnn/data.py`, `rnn/utils.py`).
//!
//! * The vocabulary is built from the training split, words in order of first appearance, with
//!   `<eos>` appended to every line: 10,000 words on the real data.
//! * Other text is mapped through that vocabulary; a word it does not know becomes `<unk>` and is
//!   counted ([`Tokens::unknown`]), so a user sees how much of their text fell outside it.
//! * [`Batchified`] lays a token stream out in `batch_size` columns (time-major, like
//!   `batchify`); [`Batchified::window`] cuts the `(input, target)` windows of truncated BPTT;
//!   [`SeqLen`] draws the window lengths of the search (`bptt`, 5% of the time `bptt/2`) and of
//!   the evaluation training (additionally `N(base, 5)` clamped to `[5, bptt + 20]`).
//!
//! ```
//! use darts_data::ptb::{Batchified, Dictionary};
//! let mut dict = Dictionary::default();
//! let train = dict.tokenize_and_add("a b c\nd e\n");
//! assert_eq!(dict.len(), 6); // a b c <eos> d e
//! assert_eq!(train.len(), 7);
//! let b = Batchified::new(&train, 2).unwrap(); // 3 rows × 2 columns, one token dropped
//! let (x, y) = b.window(0, 2);
//! assert_eq!((x.len(), y.len()), (4, 4));
//! ```

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The end-of-sentence token appended to every line.
pub const EOS: &str = "<eos>";
/// The unknown-word token (already present in the PTB text).
pub const UNK: &str = "<unk>";

/// Errors reading Penn Treebank files.
#[derive(Debug, thiserror::Error)]
pub enum PtbError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("{path}: not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 {
        /// File.
        path: PathBuf,
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The file has no words.
    #[error("{path}: the file has no words")]
    Empty {
        /// File.
        path: PathBuf,
    },
    /// A split is too short for the requested batch layout.
    #[error("{what}: {tokens} tokens cannot fill {batch_size} columns of at least 2 rows")]
    TooShort {
        /// Which split.
        what: String,
        /// Tokens available.
        tokens: usize,
        /// Columns requested.
        batch_size: usize,
    },
}

/// Word ↔ id mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dictionary {
    words: Vec<String>,
    index: HashMap<String, u32>,
}

impl Dictionary {
    /// Number of words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Id of `word`, adding it if new.
    pub fn add(&mut self, word: &str) -> u32 {
        if let Some(&i) = self.index.get(word) {
            return i;
        }
        let i = self.words.len() as u32;
        self.words.push(word.to_string());
        self.index.insert(word.to_string(), i);
        i
    }

    /// Id of `word`, if known.
    pub fn get(&self, word: &str) -> Option<u32> {
        self.index.get(word).copied()
    }

    /// The word with id `id`.
    pub fn word(&self, id: u32) -> Option<&str> {
        self.words.get(id as usize).map(String::as_str)
    }

    /// All words, in id order.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Tokenise `text` (whitespace-separated words, `<eos>` after every line), adding new words.
    pub fn tokenize_and_add(&mut self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for line in text.lines() {
            for w in line.split_whitespace() {
                out.push(self.add(w));
            }
            out.push(self.add(EOS));
        }
        out
    }

    /// Tokenise `text` with this vocabulary; unknown words become `<unk>` (added to the
    /// vocabulary only if it lacks `<unk>` and an unknown word occurs).
    pub fn tokenize(&mut self, text: &str) -> Tokens {
        let mut ids = Vec::new();
        let mut unknown = 0;
        for line in text.lines() {
            for w in line.split_whitespace() {
                match self.get(w) {
                    Some(i) => ids.push(i),
                    None => {
                        unknown += 1;
                        let u = self.add(UNK);
                        ids.push(u);
                    }
                }
            }
            ids.push(self.add(EOS));
        }
        Tokens { ids, unknown }
    }
}

/// A tokenised text and how many of its words were unknown to the vocabulary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids (with `<eos>` per line).
    pub ids: Vec<u32>,
    /// Words mapped to `<unk>` because the vocabulary lacks them.
    pub unknown: usize,
}

impl Tokens {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The three splits with the training vocabulary.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Vocabulary (from the training split).
    pub dictionary: Dictionary,
    /// Training tokens.
    pub train: Tokens,
    /// Validation tokens.
    pub valid: Tokens,
    /// Test tokens.
    pub test: Tokens,
}

/// Read a text file strictly: an I/O failure, invalid UTF-8 or a file without words is an error.
pub fn read_text(path: &Path) -> Result<String, PtbError> {
    let bytes = std::fs::read(path).map_err(|source| PtbError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| PtbError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    if text.split_whitespace().next().is_none() {
        return Err(PtbError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

impl Corpus {
    /// Load `ptb.train.txt`, `ptb.valid.txt` and `ptb.test.txt` from `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, PtbError> {
        let dir = dir.as_ref();
        let train_text = read_text(&dir.join("ptb.train.txt"))?;
        let valid_text = read_text(&dir.join("ptb.valid.txt"))?;
        let test_text = read_text(&dir.join("ptb.test.txt"))?;
        let mut dictionary = Dictionary::default();
        let train = Tokens {
            ids: dictionary.tokenize_and_add(&train_text),
            unknown: 0,
        };
        let valid = dictionary.tokenize(&valid_text);
        let test = dictionary.tokenize(&test_text);
        Ok(Self {
            dictionary,
            train,
            valid,
            test,
        })
    }
}

/// A token stream laid out in `cols` columns of `rows` consecutive tokens (time-major: element
/// `[t, j]` is token `j·rows + t`), the trailing `len mod cols` tokens dropped (reference
/// `batchify`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batchified {
    /// Row-major `[rows, cols]` token ids.
    pub data: Vec<u32>,
    /// Time steps.
    pub rows: usize,
    /// Columns (batch size).
    pub cols: usize,
}

impl Batchified {
    /// Lay out `tokens` in `batch_size` columns; needs at least two rows.
    pub fn new(tokens: &[u32], batch_size: usize) -> Result<Self, PtbError> {
        let rows = tokens.len().checked_div(batch_size).unwrap_or(0);
        if rows < 2 {
            return Err(PtbError::TooShort {
                what: "token stream".into(),
                tokens: tokens.len(),
                batch_size,
            });
        }
        let mut data = vec![0; rows * batch_size];
        for j in 0..batch_size {
            for t in 0..rows {
                data[t * batch_size + j] = tokens[j * rows + t];
            }
        }
        Ok(Self {
            data,
            rows,
            cols: batch_size,
        })
    }

    /// The window starting at row `i`: inputs rows `i..i+T`, targets rows `i+1..i+1+T`, with
    /// `T = min(seq_len, rows − 1 − i)`; both row-major `[T, cols]`. Empty when `i ≥ rows − 1`.
    pub fn window(&self, i: usize, seq_len: usize) -> (Vec<u32>, Vec<u32>) {
        if i + 1 >= self.rows {
            return (Vec::new(), Vec::new());
        }
        let t = seq_len.min(self.rows - 1 - i);
        let c = self.cols;
        (
            self.data[i * c..(i + t) * c].to_vec(),
            self.data[(i + 1) * c..(i + 1 + t) * c].to_vec(),
        )
    }

    /// Start rows and lengths of consecutive windows of exactly `bptt` (the last one shorter),
    /// as evaluation walks a split.
    pub fn eval_windows(&self, bptt: usize) -> Vec<(usize, usize)> {
        let bptt = bptt.max(1);
        (0..self.rows.saturating_sub(1))
            .step_by(bptt)
            .map(|i| (i, bptt.min(self.rows - 1 - i)))
            .collect()
    }
}

/// How window lengths are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqLenMode {
    /// Search: `bptt`, or `bptt / 2` with probability 5%.
    Search,
    /// Evaluation training: that base, then `max(5, ⌊N(base, 5)⌋)`, at most `bptt + delta`.
    Train {
        /// Maximum excess over `bptt` (20 in the reference).
        max_delta: usize,
    },
}

/// Draws BPTT window lengths (deterministic for a seed).
#[derive(Clone, Debug)]
pub struct SeqLen {
    /// Nominal window length (35).
    pub bptt: usize,
    /// Search or train rule.
    pub mode: SeqLenMode,
    rng: StdRng,
}

impl SeqLen {
    /// A sampler seeded with `seed`.
    pub fn new(bptt: usize, mode: SeqLenMode, seed: u64) -> Self {
        Self {
            bptt: bptt.max(1),
            mode,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next length (at least 1).
    pub fn sample(&mut self) -> usize {
        let base = if self.rng.random::<f64>() < 0.95 {
            self.bptt as f64
        } else {
            self.bptt as f64 / 2.0
        };
        match self.mode {
            SeqLenMode::Search => (base as usize).max(1),
            SeqLenMode::Train { max_delta } => {
                // Box–Muller.
                let u1: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = self.rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let len = (base + 5.0 * z).floor().max(5.0) as usize;
                len.min(self.bptt + max_delta)
            }
        }
    }

    /// The windows `(start row, length)` of one pass over `data`, drawing lengths as the
    /// reference loop does (`while i < rows − 2`).
    pub fn epoch_windows(&mut self, data: &Batchified) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 2 < data.rows {
            let len = self.sample();
            let t = len.min(data.rows - 1 - i);
            out.push((i, t));
            i += len;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_and_unknown_words() {
        let mut d = Dictionary::default();
        let train = d.tokenize_and_add("the cat\nthe dog <unk>\n");
        assert_eq!(d.words(), ["the", "cat", "<eos>", "dog", "<unk>"]);
        assert_eq!(train, vec![0, 1, 2, 0, 3, 4, 2]);
        let t = d.tokenize("the bird sat\n");
        assert_eq!(t.ids, vec![0, 4, 4, 2]);
        assert_eq!(t.unknown, 2);
        assert_eq!(d.len(), 5);
    }

    #[test]
    fn batchify_is_time_major_columns() {
        let tokens: Vec<u32> = (0..11).collect();
        let b = Batchified::new(&tokens, 3).unwrap();
        assert_eq!((b.rows, b.cols), (3, 3));
        // column j holds tokens j*3 .. j*3+3
        assert_eq!(b.data, vec![0, 3, 6, 1, 4, 7, 2, 5, 8]);
        let (x, y) = b.window(0, 5);
        assert_eq!(x, vec![0, 3, 6, 1, 4, 7]);
        assert_eq!(y, vec![1, 4, 7, 2, 5, 8]);
        assert_eq!(b.window(2, 3), (vec![], vec![]));
        assert_eq!(b.eval_windows(1), vec![(0, 1), (1, 1)]);
        assert!(matches!(
            Batchified::new(&tokens, 6),
            Err(PtbError::TooShort { .. })
        ));
        assert!(Batchified::new(&tokens, 0).is_err());
    }

    #[test]
    fn sequence_lengths_follow_the_reference_rules() {
        let mut s = SeqLen::new(35, SeqLenMode::Search, 1);
        let v: Vec<usize> = (0..4000).map(|_| s.sample()).collect();
        assert!(v.iter().all(|&l| l == 35 || l == 17));
        let halves = v.iter().filter(|&&l| l == 17).count() as f64 / 4000.0;
        assert!((halves - 0.05).abs() < 0.015, "{halves}");
        let mut t = SeqLen::new(35, SeqLenMode::Train { max_delta: 20 }, 2);
        let v: Vec<usize> = (0..4000).map(|_| t.sample()).collect();
        assert!(v.iter().all(|&l| (5..=55).contains(&l)));
        let mean = v.iter().sum::<usize>() as f64 / 4000.0;
        assert!((mean - 33.6).abs() < 1.0, "{mean}");
        // Windows tile the data.
        let b = Batchified::new(&(0..400).collect::<Vec<u32>>(), 4).unwrap();
        let w = SeqLen::new(35, SeqLenMode::Search, 3).epoch_windows(&b);
        assert_eq!(w[0].0, 0);
        for p in w.windows(2) {
            assert!(p[1].0 > p[0].0);
        }
        assert!(w.last().unwrap().0 + w.last().unwrap().1 < b.rows);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("darts-ptb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, " \n\n").unwrap();
        assert!(matches!(read_text(&empty), Err(PtbError::Empty { .. })));
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, b"ok \xff\xfe").unwrap();
        match read_text(&bad) {
            Err(PtbError::NotUtf8 { offset, .. }) => assert_eq!(offset, 3),
            other => panic!("{other:?}"),
        }
        let missing = Corpus::load(dir.join("nope")).unwrap_err();
        assert!(missing.to_string().contains("ptb.train.txt"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
